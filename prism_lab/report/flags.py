"""Runs a reader must not take at face value: made by other code than the code installed now (stale), or
stopped by a wall-clock budget (truncated: the result depends on the machine it ran on)."""

from __future__ import annotations

from typing import Any

from prism_lab.harness.freshness import stale_runs

__all__ = ["render_flags", "run_flags"]


def run_flags(ledger: Any, data: Any) -> dict[str, list[dict[str, Any]]]:
    """``{"stale": [...], "truncated": [...]}``: one entry (key, kind, label, why) per flagged run of the sweep."""
    stale = stale_runs(ledger, data.runs)
    out: dict[str, list[dict[str, Any]]] = {"stale": [], "truncated": []}
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
    """A Markdown section listing the flagged runs ('' when there are none)."""
    if not flags["stale"] and not flags["truncated"]:
        return ""
    lines = ["## Warnings", ""]
    if flags["truncated"]:
        lines += ["Truncated runs (a wall-clock budget stopped them, so their numbers depend on the machine and "
                  "its load; set `max_steps` instead of `max_minutes`):", ""]
        lines += [f"- `{f['kind']}` {f['label']} (`{f['key'][:12]}`)" for f in flags["truncated"]] + [""]
    if flags["stale"]:
        lines += ["Stale runs (made by other code than the code installed now; "
                  "`prism-lab sweep run GRID --rerun-stale` makes them again):", ""]
        lines += [f"- `{f['kind']}` {f['label']} (`{f['key'][:12]}`): {f['why']}" for f in flags["stale"]] + [""]
    return "\n".join(lines) + "\n"
