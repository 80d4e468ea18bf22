"""The report's protocol table (issue #34 item 5): when a sweep evaluates the same checkpoints under several
evaluation protocols (an ``eval.backend: [builtin, vlmevalkit]`` axis, an ``eval.max_new_tokens`` axis, another
judge: each is its own eval run with its own fingerprint, prism_lab/eval/fingerprint.py), how far apart each
benchmark's scores are between protocols, with the paired item bootstrap interval
(prism_lab/report/item_bootstrap.py: per-item differences averaged over the checkpoints both protocols evaluated).

:func:`protocol_deltas` is pure: fingerprints, item scores and each run's checkpoint in, one
:class:`ProtocolDelta` per benchmark and non-reference protocol out. The reference protocol of a benchmark is the
one with the most runs (then the smaller hash), as the fingerprint warnings order them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prism_lab.report.item_bootstrap import item_bootstrap_interval, item_differences
from prism_lab.report.stats import Interval

__all__ = ["ProtocolDelta", "protocol_deltas", "render_protocol_table"]


@dataclass(frozen=True)
class ProtocolDelta:
    """``other`` − ``reference`` on one benchmark, in points, over the checkpoints both evaluated."""

    benchmark: str
    reference: Mapping[str, Any]  # the reference protocol's fingerprint
    other: Mapping[str, Any]
    checkpoints: int
    interval: Interval  # n = items paired


def protocol_deltas(prints: Mapping[str, Mapping[str, Mapping[str, Any]]],
                    items: Mapping[str, Mapping[str, Mapping[str, float]]],
                    checkpoint_of: Mapping[str, str], *, level: float = 0.95) -> list[ProtocolDelta]:
    """``prints``: eval run -> benchmark -> fingerprint; ``items``: eval run -> benchmark -> item -> score;
    ``checkpoint_of``: eval run -> the checkpoint it evaluated. Benchmarks in first-seen order; a protocol that
    shares no checkpoint with the reference gets an untestable interval (n/a)."""
    # benchmark -> fingerprint hash -> checkpoint -> that run's item scores (benchmark -> item -> score)
    by_bench: dict[str, dict[str, dict[str, Mapping[str, Mapping[str, float]]]]] = {}
    fps: dict[tuple[str, str], Mapping[str, Any]] = {}
    runs: dict[tuple[str, str], int] = {}
    for run, per_bench in prints.items():
        ckpt = checkpoint_of.get(run)
        for bench, fp in per_bench.items():
            h = str(fp.get("hash"))
            fps.setdefault((bench, h), fp)
            runs[(bench, h)] = runs.get((bench, h), 0) + 1
            if ckpt is not None and bench in items.get(run, {}):
                by_bench.setdefault(bench, {}).setdefault(h, {})[ckpt] = items[run]
            else:
                by_bench.setdefault(bench, {}).setdefault(h, {})
    out = []
    for bench, protocols in by_bench.items():
        if len(protocols) < 2:
            continue
        order = sorted(protocols, key=lambda h: (-runs[(bench, h)], h))
        ref = order[0]
        for other in order[1:]:
            shared = [c for c in protocols[other] if c in protocols[ref]]
            diffs = item_differences(protocols[other], protocols[ref], bench)
            out.append(ProtocolDelta(bench, fps[(bench, ref)], fps[(bench, other)], len(shared),
                                     item_bootstrap_interval([diffs], level=level)))
    return out


def _label(fp: Mapping[str, Any]) -> str:
    f = fp.get("fields") or {}
    return f"{f.get('backend')} `{fp.get('hash')}`"


def _flat(fields: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def _differ(d: ProtocolDelta) -> str:
    """The fingerprint fields that differ, reference value first ("decoding.max_new_tokens 8 vs 16")."""
    ref, other = _flat(d.reference.get("fields") or {}), _flat(d.other.get("fields") or {})

    def short(v: Any) -> str:
        text = "none" if v is None else str(v)
        return text[:12] if len(text) == 64 else text  # a sha256 as its short form

    return "; ".join(f"{n} {short(ref.get(n))} vs {short(other.get(n))}" for n in dict.fromkeys([*ref, *other])
                     if ref.get(n) != other.get(n)) or "their hash"


def render_protocol_table(deltas: list[ProtocolDelta]) -> str:
    """A Markdown section ('' when no checkpoint was evaluated under two protocols)."""
    from prism_lab.report.markdown import fmt_ci, fmt_signed, md_table

    if not deltas:
        return ""
    body = [[d.benchmark, _label(d.reference), _label(d.other), _differ(d), d.checkpoints, d.interval.n,
             fmt_signed(d.interval.mean), fmt_ci(d.interval.low, d.interval.high) if d.interval.testable
             else d.interval.note] for d in deltas]
    return "\n".join(["## Evaluation protocols", "",
                      "The same checkpoints scored under different evaluation protocols: per benchmark, protocol − "
                      "reference (the protocol with the most runs) in points of accuracy, with a 95% paired item "
                      "bootstrap interval (per-item differences averaged over the checkpoints both evaluated).", "",
                      md_table(["Benchmark", "Reference", "Protocol", "Differs in", "Checkpoints", "Items",
                                "Δ (points)", "95% item interval"], body), ""])
