"""Ledger -> one in-memory snapshot of a sweep (cells, runs, metrics) and tidy pandas frames.

Reads the ledger only: the grid comes from the JSON the ledger stored when the sweep was planned,
so a report never loads trainers (or torch).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from prism_lab.errors import PrismError
from prism_lab.harness.grid import CORE_AXES
from prism_lab.harness.ledger import Ledger, RunRow

#: Roles whose runs are evaluations, and the stage each one evaluates (a base-model eval is optional).
EVAL_ROLES: dict[str, str] = {"eval/base": "base", "eval/sft": "sft", "eval/align": "align", "eval/rl": "rl"}

#: Order used when several seeds of a row have different statuses: the first one found is shown.
STATUS_PRIORITY = ("failed", "running", "blocked", "pending", "missing", "done")

#: Per-benchmark baseline metrics an eval run logs (``eval/<benchmark>/<metric>``, fractions).
BASELINE_METRICS = ("chance", "majority")

#: Columns of results.csv before and after the axis columns.
RESULT_HEAD = ("sweep", "cell_id")
RESULT_TAIL = ("role", "run_key", "status", "benchmark", "metric", "value")


@dataclass
class CellInfo:
    cell_id: str
    axes: dict[str, Any]
    roles: dict[str, str]  # role -> run key


@dataclass
class SweepData:
    """Everything a report needs about one sweep, read once from the ledger."""

    name: str
    grid: dict[str, Any]
    grid_path: str
    ledger_path: str
    cells: list[CellInfo]
    runs: dict[str, RunRow]
    metrics: dict[str, list[tuple[int, str, float | None]]]
    status: dict[str, str] = field(default_factory=dict)  # ledger status per run key
    items: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # eval run -> bench -> item -> score
    chain: dict[str, str] = field(default_factory=dict)  # status including upstream failures (see _chain_status)

    # ---- grid fields (with the GridSpec defaults when absent) --------------------------------------
    @property
    def axes(self) -> dict[str, list[Any]]:
        return dict(self.grid.get("axes") or {})

    @property
    def axis_names(self) -> list[str]:
        names = list(self.axes)
        for cell in self.cells:  # axes recorded on cells but missing from the grid (defensive)
            names += [k for k in cell.axes if k not in names]
        return names

    @property
    def extra_axes(self) -> list[str]:
        return [a for a in self.axis_names if a not in CORE_AXES]

    @property
    def benchmarks(self) -> list[str]:
        return list(self.grid.get("benchmarks") or [])

    @property
    def report_spec(self) -> dict[str, Any]:
        rep = {"compare_axis": "alignment", "baseline": "none", "treatment": "prism", "significance": "paired_t"}
        rep.update(self.grid.get("report") or {})
        return rep

    @property
    def description(self) -> str:
        return str(self.grid.get("description") or "").strip()

    def axis_order(self, axis: str, value: Any) -> int:
        values = self.axes.get(axis, [])
        return values.index(value) if value in values else len(values)

    # ---- metrics ------------------------------------------------------------------------------------
    def last_values(self, key: str) -> dict[str, float | None]:
        """The latest value of every metric a run logged."""
        out: dict[str, float | None] = {}
        for _step, name, value in self.metrics.get(key, []):
            out[name] = value
        return out

    def eval_values(self, key: str) -> dict[tuple[str, str], float | None]:
        """(benchmark, metric) -> value from an eval run's ``eval/<benchmark>/<metric>`` entries."""
        out: dict[tuple[str, str], float | None] = {}
        for name, value in self.last_values(key).items():
            if not name.startswith("eval/"):
                continue
            bench, sep, metric = name[len("eval/"):].rpartition("/")
            if sep and bench:
                out[(bench, metric)] = value
        return out

    def accuracies(self, key: str) -> dict[str, float]:
        """Benchmark -> accuracy fraction of an eval run (only benchmarks with a value)."""
        return {b: v for (b, m), v in self.eval_values(key).items() if m == "accuracy" and v is not None}

    def baselines(self, key: str) -> dict[str, dict[str, float]]:
        """Benchmark -> ``{"chance", "majority", "n"}`` (fractions; n = items) an eval run logged: the
        benchmark's baselines (prism_lab.eval.baselines), only for benchmarks that have one."""
        vals = self.eval_values(key)
        out: dict[str, dict[str, float]] = {}
        for (b, m), v in vals.items():
            if m in BASELINE_METRICS and v is not None:
                out.setdefault(b, {})[m] = v
        for b, got in out.items():
            if vals.get((b, "n")) is not None:
                got["n"] = vals[(b, "n")]
        return out

    def run_status(self, key: str) -> str:
        """The ledger status of a run (`missing` if the ledger has no such run)."""
        return self.status.get(key, "missing")

    def chain_status(self, key: str) -> str:
        """`failed` for a waiting run whose upstream failed; else the ledger status."""
        return self.chain.get(key, "missing")


def resolve_sweep(ledger: Ledger, target: str | Path) -> str:
    """A sweep name from a name or a grid file path (matched on the path the sweep was planned from)."""
    names = ledger.sweep_names()
    text = str(target)
    if text in names:
        return text
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        want = path.resolve()
        for name in names:
            row = ledger.sweep(name)
            if row is not None and Path(row["grid_path"]).resolve() == want:
                return name
        grid_name = _grid_file_name(path)
        if grid_name in names:
            return grid_name
    known = ", ".join(names) or "(none)"
    raise PrismError(f"{target}: no sweep of that name or grid file in {ledger.path} (known sweeps: {known}); "
                     f"run `prism-lab sweep plan/run` first")


def _grid_file_name(path: Path) -> str:
    """The sweep name a grid file declares, else its file stem (a name is never inherited through
    `extends:`, as in harness.planning.load_grid)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return path.stem
    if not isinstance(data, dict):
        return path.stem
    if data.get("name"):
        return str(data["name"])
    return path.stem


def _chain_status(runs: dict[str, RunRow]) -> dict[str, str]:
    """Status of a run's whole chain: its own when done/running/failed, else `failed` when a run upstream
    failed (the result will not come without a retry), else its own (pending, blocked)."""
    memo: dict[str, bool] = {}

    def upstream_failed(key: str, seen: frozenset) -> bool:
        if key in memo:
            return memo[key]
        run = runs.get(key)
        hit = False
        for dep in (run.inputs.values() if run else ()):
            dep_run = runs.get(dep)
            if dep in seen or dep_run is None:
                continue
            if dep_run.status == "failed" or upstream_failed(dep, seen | {dep}):
                hit = True
                break
        memo[key] = hit
        return hit

    out = {}
    for key, run in runs.items():
        status = run.status
        if status not in ("done", "running", "failed") and upstream_failed(key, frozenset({key})):
            status = "failed"
        out[key] = status
    return out


def load_sweep(ledger: Ledger, sweep: str) -> SweepData:
    """Read one sweep: grid JSON, cells with their role -> run key maps, runs (and upstream) and metrics."""
    row = ledger.sweep(sweep)
    if row is None:
        raise PrismError(f"sweep {sweep!r} is not in {ledger.path}")
    grid = json.loads(row["grid_json"])
    cells = [CellInfo(cid, axes, roles) for cid, axes, roles in ledger.cells(sweep)]
    keys = {k for c in cells for k in c.roles.values()}
    runs = ledger.get_runs(keys)
    frontier = {d for r in runs.values() for d in r.inputs.values()} - set(runs)
    while frontier:  # upstream runs that are not a role of any cell
        found = ledger.get_runs(frontier)
        runs.update(found)
        frontier = {d for r in found.values() for d in r.inputs.values()} - set(runs)
    metrics = {k: ledger.metrics(k) for k in runs}
    items = ledger.item_scores(k for k, r in runs.items() if r.kind == "eval")
    data = SweepData(name=sweep, grid=grid, grid_path=row["grid_path"], ledger_path=str(ledger.path),
                     cells=cells, runs=runs, metrics=metrics, items=items)
    data.status = {k: r.status for k, r in runs.items()}
    data.chain = _chain_status(runs)
    return data


def _common_axes(data: SweepData, cell_ids: list[str]) -> dict[str, Any]:
    """Axis values shared by every cell that uses a run (an axis the run does not depend on is blank)."""
    by_id = {c.cell_id: c for c in data.cells}
    out: dict[str, Any] = {}
    for axis in data.axis_names:
        values = {json.dumps(by_id[c].axes.get(axis), sort_keys=True) for c in cell_ids}
        out[axis] = by_id[cell_ids[0]].axes.get(axis) if len(values) == 1 else None
    return out


def run_cells(data: SweepData) -> dict[tuple[str, str], list[str]]:
    """(role, run key) -> the cells that use that run in that role, in grid order."""
    out: dict[tuple[str, str], list[str]] = {}
    for cell in data.cells:
        for role, key in cell.roles.items():
            out.setdefault((role, key), []).append(cell.cell_id)
    return out


def results_frame(data: SweepData) -> pd.DataFrame:
    """results.csv: one row per eval run x benchmark x metric, with the axis values the run depends on.

    A run shared by several cells (e.g. the SFT eval) is one row set; its ``cell_id`` lists the cells
    (``;``-separated) and axes that differ between those cells are blank. A run with no metrics yet
    (pending, running, failed) still gets one row with its status and empty benchmark/metric/value.
    """
    axis_names = data.axis_names
    columns = [*RESULT_HEAD, *axis_names, *RESULT_TAIL]
    records: list[dict[str, Any]] = []
    role_order = list(EVAL_ROLES)
    groups = sorted(run_cells(data).items(),
                    key=lambda kv: (role_order.index(kv[0][0]) if kv[0][0] in role_order else 99,))
    for (role, key), cell_ids in groups:
        if role not in EVAL_ROLES:
            continue
        base = {"sweep": data.name, "cell_id": ";".join(cell_ids), **_common_axes(data, cell_ids),
                "role": role, "run_key": key, "status": data.run_status(key)}
        values = data.eval_values(key)
        if not values:
            records.append({**base, "benchmark": None, "metric": None, "value": None})
            continue
        for (bench, metric), value in values.items():
            records.append({**base, "benchmark": bench, "metric": metric, "value": value})
    return pd.DataFrame.from_records(records, columns=columns)


def curves_frame(data: SweepData) -> pd.DataFrame:
    """curves.csv: every training metric of every non-eval run: (run, kind, label, status, step, metric, value)."""
    columns = ["sweep", "run_key", "kind", "label", "status", *data.axis_names, "step", "metric", "value"]
    users = run_cells(data)
    cells_of: dict[str, list[str]] = {}
    for (role, key), ids in users.items():
        if role not in EVAL_ROLES:
            cells_of.setdefault(key, [])
            cells_of[key] += [i for i in ids if i not in cells_of[key]]
    records: list[dict[str, Any]] = []
    for key, cell_ids in cells_of.items():
        run = data.runs.get(key)
        if run is None or run.kind == "eval":
            continue
        axes = _common_axes(data, cell_ids)
        for step, name, value in data.metrics.get(key, []):
            records.append({"sweep": data.name, "run_key": key, "kind": run.kind, "label": run.label,
                            "status": data.run_status(key), **axes, "step": step, "metric": name, "value": value})
    return pd.DataFrame.from_records(records, columns=columns)
