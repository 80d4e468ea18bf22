"""Print every difference between this interpreter's installed distributions and a lock, one per line
(``name: installed X, locked Y``). Used by scripts/newest.sh.  Usage: python scripts/lock_diff.py [LOCK]"""

from __future__ import annotations

import sys
from pathlib import Path

from prism_lab.harness.installed import CORE_LOCK, installed_versions
from prism_lab.harness.lockfile import all_differences, parse_lock


def main(argv: list[str]) -> int:
    lock = Path(argv[0]) if argv else CORE_LOCK
    installed = dict(installed_versions())
    installed.pop("pip", None)  # the installer, not locked
    diffs = all_differences(parse_lock(lock.read_text()), installed)
    for diff in diffs:
        print(f"  {diff.line()}")
    print(f"{len(diffs)} difference(s) from {lock}" if diffs else f"no differences from {lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
