"""The evaluation fingerprints of a sweep's eval runs, per benchmark (prism_lab/eval/fingerprint.py): the
report's "Evaluation fingerprints" section, and one warning line per benchmark whose runs mix fingerprints
(every number of a benchmark's column, and every delta on it, should come from one protocol)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prism_lab.eval.fingerprint import mixed_fingerprints, mixed_warning, recorded_fingerprints

__all__ = ["mixed_lines", "render_fingerprints", "sweep_fingerprints"]


def sweep_fingerprints(ledger: Any, data: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """Done eval run of the sweep (``data``: report.frame.SweepData) -> benchmark -> its fingerprint."""
    keys = [k for k, r in data.runs.items() if r is not None and r.kind == "eval" and r.status == "done"]
    return recorded_fingerprints(ledger, keys)


def mixed_lines(per_run: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One warning line per benchmark whose runs were made under more than one fingerprint."""
    return [mixed_warning(m) for m in mixed_fingerprints(per_run)]


def _decoding(d: dict[str, Any]) -> str:
    text = f"max_new_tokens {d.get('max_new_tokens')}, "
    text += (f"T {d.get('temperature')}, top_p {d.get('top_p')}" if d.get("do_sample") else "greedy")
    return text + (f", limit {d['limit']}" if d.get("limit") else "")


def render_fingerprints(per_run: dict[str, dict[str, dict[str, Any]]], benchmarks: list[str]) -> str:
    """A Markdown section, one row per benchmark and fingerprint ('' when no run recorded one)."""
    from prism_lab.report.markdown import md_table

    counts: dict[str, Counter] = {}
    fields: dict[tuple[str, str], dict[str, Any]] = {}
    for prints in per_run.values():
        for bench, fp in prints.items():
            counts.setdefault(bench, Counter())[fp.get("hash")] += 1
            fields.setdefault((bench, fp.get("hash")), fp.get("fields") or {})
    if not counts:
        return ""
    order = [b for b in benchmarks if b in counts] + sorted(b for b in counts if b not in benchmarks)
    body = []
    for bench in order:
        mixed = len(counts[bench]) > 1
        for h, n in sorted(counts[bench].items(), key=lambda hn: (-hn[1], hn[0])):  # as mixed_fingerprints orders
            f = fields[(bench, h)]
            body.append([bench, f"`{h}`" + (f" ({n} of {sum(counts[bench].values())} runs)" if mixed else ""),
                         f"{f.get('backend')} {f.get('backend_version') or ''}".strip(), f.get("engine") or "–",
                         _decoding(f.get("decoding") or {}), f.get("judge") or "none"])
    return "\n".join(["## Evaluation fingerprints", "",
                      "The protocol each benchmark's scores were made under (prism_lab/eval/fingerprint.py: benchmark "
                      "and data hashes, prompting, backend, judge, decoding, engine), as a short hash. A benchmark "
                      "with more than one row mixes protocols (see Warnings).", "",
                      md_table(["Benchmark", "Fingerprint", "Backend", "Engine", "Decoding", "Judge"], body), ""])
