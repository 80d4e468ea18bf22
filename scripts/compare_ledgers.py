#!/usr/bin/env python
"""Compare the metrics of two roots run by label: the same grid before and after a code change.

    python scripts/compare_ledgers.py ROOT_A ROOT_B

Per run label: whether the content key is the same, how many metrics (name, step) both logged and how many differ,
wall-clock metrics (durations, throughputs) left out. Exit code 1 when an eval metric differs. Read-only: it opens
both ledgers with SQLite's read-only URI.
"""

from __future__ import annotations

import re
import sqlite3
import sys

#: Metrics that measure wall-clock time, which differ between any two runs.
WALL_CLOCK = re.compile(r"^time/|_s$|per_s$|/s$")


def read(root: str) -> tuple[dict[tuple[str, str, int], float], dict[str, str]]:
    conn = sqlite3.connect(f"file:{root}/ledger.sqlite?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    metrics = {(r["label"], r["name"], r["step"]): r["value"]
               for r in conn.execute("SELECT r.label, m.name, m.step, m.value FROM metrics m "
                                     "JOIN runs r ON r.key = m.run_key")
               if not WALL_CLOCK.search(r["name"])}
    keys = {r["label"]: r["key"] for r in conn.execute("SELECT label, key FROM runs")}
    conn.close()
    return metrics, keys


def same(a: float | None, b: float | None) -> bool:
    return a == b or (a != a and b != b)  # NaN equals NaN here


def main(a_root: str, b_root: str) -> int:
    (a, a_keys), (b, b_keys) = read(a_root), read(b_root)
    eval_differs = False
    for label in sorted(set(a_keys) | set(b_keys)):
        ours = {k: v for k, v in a.items() if k[0] == label}
        theirs = {k: v for k, v in b.items() if k[0] == label}
        common = set(ours) & set(theirs)
        differ = sorted(k for k in common if not same(ours[k], theirs[k]))
        eval_differs |= any(k[1].startswith("eval/") for k in differ)
        key = "same key" if a_keys.get(label) == b_keys.get(label) else "new key "
        print(f"{label:58s} {key}  {len(common):4d} metrics, {len(differ):3d} differ, "
              f"{len(set(ours) - set(theirs))} only in A, {len(set(theirs) - set(ours))} only in B")
        for k in differ[:5]:
            print(f"    {k[1]} @ step {k[2]}: {ours[k]!r} -> {theirs[k]!r}")
    return 1 if eval_differs else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/compare_ledgers.py ROOT_A ROOT_B")
    sys.exit(main(sys.argv[1], sys.argv[2]))
