"""One trial as a one-cell sweep: plan the trial's grid, run the stage runs each objective and report
needs with the chosen executor (local or Ray), and read the objective values from the ledger."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError, PrismError
from prism_lab.harness.executors import ExecutorOptions, make_executor
from prism_lab.tune.recovery import RUNS_ATTR, SWEEP_ATTR
from prism_lab.tune.space import SearchSpace
from prism_lab.tune.space_spec import ObjectiveSpec, ReportSpec


class StudyAborted(PrismError):
    """The study cannot go on (repeated failures, a stage kind missing from this build)."""


class TrialFailed(Exception):
    """A trial's stage run failed, or its objective metric is missing."""


class TrialInvalid(Exception):
    """The sampled parameters make a stage config invalid (e.g. top_k > num_experts)."""


def reduce_metric(values: list[float], how: str) -> float:
    if how == "last":
        return values[-1]
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) / len(values)


def read_metric(ledger: Any, key: str, label: str, spec: ObjectiveSpec | ReportSpec) -> float:
    series = [(step, value) for step, name, value in ledger.metrics(key) if name == spec.metric and value is not None]
    values = [v for _, v in series if math.isfinite(v)]
    if not values:
        logged = sorted({name for _, name, _ in ledger.metrics(key)})
        if series:
            raise TrialFailed(f"metric {spec.metric!r} of {label} ({key[:12]}) is not finite: {series[-1][1]}")
        raise TrialFailed(f"run {label} ({key[:12]}, role {spec.role}) logged no metric {spec.metric!r}; "
                          f"it logged: {', '.join(logged) or 'nothing'}")
    return reduce_metric(values, spec.reduce)


def run_roles(executor: Any, ledger: Any, plan: Any, cell: Any, roles: list[str]) -> None:
    """Run the stage runs of ``roles`` and everything they depend on; a failure raises TrialFailed."""
    from prism_lab.harness.plan import Plan

    needed: set[str] = set()
    stack = [cell.runs[r] for r in roles]
    while stack:
        key = stack.pop()
        if key not in needed:
            needed.add(key)
            stack.extend(plan.runs[key].inputs.values())
    sub = Plan(grid=plan.grid, cells=plan.cells, runs={k: r for k, r in plan.runs.items() if k in needed})
    summary = executor.run(sub)
    if summary.unavailable:
        kinds = sorted({plan.runs[k].kind for k in summary.unavailable})
        raise StudyAborted(f"stage kind(s) {', '.join(kinds)} are not available in this build; "
                           "a trial cannot run them")
    if not summary.ok:
        bad = (summary.failed or summary.blocked)[0]
        row = ledger.get_run(bad)
        detail = (row.error if row else None) or "failed"
        raise TrialFailed(f"{plan.runs[bad].label} ({bad[:12]}): {detail}"
                          + (f"; log: {row.log_path}" if row and row.log_path else ""))


def preflight_trial(plan: Any, root: Path, executor: ExecutorOptions, *, rerun_stale: bool) -> Any:
    """The pre-flight of `sweep run` for one trial's plan (harness/preflight.py): a run that cannot fit
    its devices makes the trial invalid; returns what it found (the stale runs)."""
    from prism_lab.harness import preflight

    try:
        return preflight.check_plan(plan, root, preflight.RunRequest(executor.name), executor.gpus,
                                    list(plan.runs), rerun_stale=rerun_stale)
    except ConfigError as exc:
        raise TrialInvalid(str(exc)) from None


def execute_trial(trial: Any, params: dict[str, Any], *, space: SearchSpace, root: Path, sweep: str,
                  executor: ExecutorOptions, rerun_stale: bool = False,
                  warn: Callable[[dict[str, list[str]], Any], None] | None = None) -> tuple[str, Any]:
    """Plan and run ``trial`` as sweep ``sweep``: ``("pruned", step)`` or ``("complete", objective values)``.
    Done runs made by other code are run again with ``rerun_stale``, else reused and passed to ``warn``."""
    from prism_lab.harness import preflight
    from prism_lab.harness.ledger import Ledger
    from prism_lab.harness.planning import build_plan

    try:
        grid = space.trial_grid(params, sweep)
        plan = build_plan(grid)
    except ConfigError as exc:
        raise TrialInvalid(str(exc).split(": ", 2)[-1]) from None
    cleared = preflight_trial(plan, root, executor, rerun_stale=rerun_stale)
    cell = plan.cells[0]
    trial.set_user_attr(SWEEP_ATTR, sweep)
    trial.set_user_attr(RUNS_ATTR, dict(cell.runs))
    ledger = Ledger(root)
    try:
        ledger.record_plan(plan)
        if rerun_stale:
            preflight.commit(cleared, rerun_stale=True)
        elif cleared.stale and warn is not None:
            warn(cleared.stale, plan)
        runner = make_executor(root, executor, show_progress=False)
        for step, rep in enumerate(space.reports):
            run_roles(runner, ledger, plan, cell, [rep.role])
            key = cell.runs[rep.role]
            value = read_metric(ledger, key, plan.runs[key].label, rep)
            if (rep.direction or space.spec.objective.direction) != space.spec.objective.direction:
                value = -value
            trial.report(value, step)
            if trial.should_prune():
                return "pruned", step
        run_roles(runner, ledger, plan, cell, [o.role for o in space.objectives])
        values = []
        for obj in space.objectives:
            key = cell.runs[obj.role]
            values.append(read_metric(ledger, key, plan.runs[key].label, obj))
        return "complete", values
    finally:
        ledger.close()
