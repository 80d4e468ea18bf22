"""Runs a reader must not take at face value: made by other code than the code installed now (stale),
stopped by a wall-clock budget (truncated: the result depends on the machine it ran on), made on more than
one kind of machine (their numbers reproduce bitwise only on the kind that made them), or evaluated under more
than one evaluation fingerprint for one benchmark (``mixed_eval``: lines of report/protocol.py)."""

from __future__ import annotations

from typing import Any

from prism_lab.harness.freshness import run_machines, stale_runs
from prism_lab.harness.machine import conflicting_machines

__all__ = ["render_flags", "run_flags"]


def run_flags(ledger: Any, data: Any) -> dict[str, list[dict[str, Any]]]:
    """``{"stale": [...], "truncated": [...], "machines": [...]}``: one entry (key, kind, label, why) per flagged
    run of the sweep, and one (label, runs, machine) per kind of machine its done runs were made on."""
    stale = stale_runs(ledger, data.runs)
    out: dict[str, list[dict[str, Any]]] = {
        "stale": [], "truncated": [],
        "machines": run_machines(ledger, data.runs),
    }
    for key, run in data.runs.items():
        if run is None:
            continue
        if key in stale:
            out["stale"].append({"key": key, "kind": run.kind, "label": run.label, "why": "; ".join(stale[key][:3])})
        if any(name == "truncated" and value for _, name, value in data.metrics.get(key, [])):
            out["truncated"].append({"key": key, "kind": run.kind, "label": run.label,
                                     "why": "stopped by its wall-clock budget (max_minutes)"})
    return out


def render_flags(flags: dict[str, list[dict[str, Any]]]) -> str:
    """A Markdown section listing the flagged runs ('' when there are none), then the kinds of machine the runs
    were made on."""
    machines = flags.get("machines", [])
    mixed = conflicting_machines(m.get("machine") for m in machines)
    return _warnings(flags, mixed) + _machines(machines)


def _machines(machines: list[dict[str, Any]]) -> str:
    if not machines:
        return ""
    lines = ["## Machines", "",
             "Done runs by the kind of machine they were made on. The same grid reproduces these numbers bitwise on "
             "the same kind of machine; on another (other CPU model or SIMD level, or GPU) the math libraries pick "
             "other kernels and the numbers can differ.", ""]
    lines += [f"- {m['label']}: {m['runs']} run{'s' if m['runs'] != 1 else ''}" for m in machines]
    return "\n".join(lines) + "\n"


def _warnings(flags: dict[str, list[Any]], mixed: bool) -> str:
    protocols = flags.get("mixed_eval", [])
    if not flags["stale"] and not flags["truncated"] and not mixed and not protocols:
        return ""
    lines = ["## Warnings", ""]
    if protocols:
        lines += ["Benchmarks evaluated under more than one evaluation fingerprint (see Evaluation fingerprints): "
                  "their rows, columns and deltas mix protocols.", ""]
        lines += [f"- {line}" for line in protocols] + [""]
    if mixed:
        lines += ["Runs made on more than one kind of machine (see Machines below): a chain whose stages ran on "
                  "different kinds, or rows from different kinds, do not reproduce bitwise on any one machine.", ""]
    if flags["truncated"]:
        lines += ["Truncated runs (a wall-clock budget stopped them, so their numbers depend on the machine and "
                  "its load; set `max_steps` instead of `max_minutes`):", ""]
        lines += [f"- `{f['kind']}` {f['label']} (`{f['key'][:12]}`)" for f in flags["truncated"]] + [""]
    if flags["stale"]:
        lines += ["Stale runs (made by other code than the code installed now; "
                  "`prism-lab sweep run GRID --rerun-stale` makes them again):", ""]
        lines += [f"- `{f['kind']}` {f['label']} (`{f['key'][:12]}`): {f['why']}" for f in flags["stale"]] + [""]
    return "\n".join(lines) + "\n"
