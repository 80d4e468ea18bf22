"""Part (a) of ``benchmarks/gpu/check.py`` (issue #31 item 6): ``experiments/paper-cpu.yaml``'s shapes on the GPUs.

The grid is written at run time as a file that extends paper-cpu.yaml (whatever its step counts and lengths
are today) and puts back on every sharded stage what paper-cpu changed only because a CPU forced it: the
paper's resources (``experiments/paper.yaml``: bf16 parameters, fp32 reductions and master weights, gradient
checkpointing, CPU offload, bf16 export) with ``processes = gpus = min(GPUs here, the paper's processes)``
(NCCL), ``memory_gb`` = this GPU's size, and ``precision: bf16``. Rollouts stay paper-cpu's engine unless
``--rollout-engine vllm`` (the colocated vLLM engine has rows of its own in part (b)). To fit the time box
the cells are one size, one seed and ``alignment: prism`` (which runs every stage kind), and one eval run.

Each stage run is started as ``sweep run`` starts it (``harness.executors.placement.launch_command``), through
``peak_probe.py`` so every rank leaves its peak CUDA memory; its status and one-line error come from the
ledger. Planned: ``harness.memory_fit.estimate_runs`` for the same run.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from benchmarks.gpu.rows import GB, REPO, Guard, Row, base_env, log_error, one_line, run_process

PAPER_CPU = REPO / "experiments" / "paper-cpu.yaml"
PROBE = Path(__file__).resolve().parent / "peak_probe.py"
#: Seconds a stage run needs at least to be worth starting (interpreter, imports, NCCL, a few steps).
MIN_STAGE_S = 20.0
#: Stage kinds whose rows the table shows, in order (data is set-up: a row only when it fails).
KINDS = ("data", "sft", "disc_warmup", "align", "rl", "eval")


def _raw(path: Path) -> dict[str, Any]:
    from prism_lab.harness.grid import load_raw

    return load_raw(path.resolve(), ())[0]


def grid_overrides(n_gpus: int, memory_gb: float, rollout_engine: str | None = None,
                   paper_cpu: Path = PAPER_CPU) -> dict[str, Any]:
    """The grid that extends ``paper_cpu`` for ``n_gpus`` GPUs of ``memory_gb`` each (see the module docstring)."""
    from prism_lab.harness.yamlio import load_yaml

    own = load_yaml(paper_cpu)[0]
    paper = _raw(paper_cpu.parent / own["extends"])
    merged = _raw(paper_cpu)
    stages: dict[str, Any] = {}
    for kind, cfg in (own.get("stages") or {}).items():
        paper_res = ((paper.get("stages") or {}).get(kind) or {}).get("resources")
        if not isinstance(cfg, dict) or "resources" not in cfg or not paper_res:
            continue
        procs = max(1, min(n_gpus, int(paper_res.get("processes", 1))))
        out: dict[str, Any] = {"resources": {**paper_res, "processes": procs, "gpus": procs, "memory_gb": memory_gb}}
        if "precision" in cfg:
            out["precision"] = "bf16"
        if rollout_engine and "rollout_engine" in cfg:
            out["rollout_engine"] = rollout_engine
        stages[kind] = out
    axes = {}
    for name, values in (merged.get("axes") or {}).items():
        if name == "algorithm":
            axes[name] = list(values)
        elif name == "alignment":
            axes[name] = list(values)  # the report compares its values; only the prism chain runs (selected_runs)
        else:
            axes[name] = list(values)[:1]
    return {"extends": str(paper_cpu.resolve()), "name": "gpu-check", "axes": axes, "stages": stages}


def write_grid(out: Path, overrides: dict[str, Any]) -> Path:
    path = out / "gpu-check.yaml"
    path.write_text(json.dumps(overrides, indent=1) + "\n")  # JSON is YAML
    return path


def _upstream_kinds(plan, key: str) -> set[str]:
    seen, todo = set(), [key]
    while todo:
        for dep in plan.runs[todo.pop()].inputs.values():
            if dep in plan.runs and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return {plan.runs[k].kind for k in seen}


def selected_runs(plan) -> list[str]:
    """The run keys to execute, in dependency order: every run of KINDS except the evals, the rl runs after
    alignment only (when there are such), and one eval (of the GRPO run when there is one)."""
    rl = [k for k, r in plan.runs.items() if r.kind == "rl"]
    aligned = [k for k in rl if "align" in _upstream_kinds(plan, k)]
    keys = [k for k, r in plan.runs.items() if r.kind in KINDS and r.kind not in ("eval", "rl")] + (aligned or rl)
    evals = [k for k, r in plan.runs.items() if r.kind == "eval"
             and all(d in keys or d not in plan.runs for d in r.inputs.values())]
    grpo = [k for k in evals if any(plan.runs[d].kind == "rl" and plan.runs[d].config.get("algorithm") == "grpo"
                                    for d in plan.runs[k].inputs.values() if d in plan.runs)]
    chosen = set(keys) | set((grpo or evals)[:1])
    return sorted((k for k in plan.runs if k in chosen), key=lambda k: plan.runs[k].kind == "eval")  # stable


def row_name(run) -> str:
    if run.kind == "rl":
        return f"a {run.kind} {run.config.get('algorithm', '')}".rstrip()
    return f"a {run.kind}"


def plan_rows(grid_path: Path) -> tuple[Any, list[str], list[Row]]:
    """(plan, keys, rows with the planner's figures) of the written grid."""
    from prism_lab.harness import planning
    from prism_lab.harness.memory_fit import estimate_runs, largest_terms

    plan = planning.build_plan(planning.load_grid(grid_path))
    keys = selected_runs(plan)
    rows = []
    for key in keys:
        run = plan.runs[key]
        row = Row(row_name(run), extra={"key": key, "kind": run.kind})
        try:
            recs = estimate_runs(plan, [key], None)
        except Exception as exc:  # noqa: BLE001 - a planner error is this row's finding, not the table's end
            row.detail = f"planner: {one_line(f'{type(exc).__name__}: {exc}')}"
            recs = []
        if recs:
            est = recs[0]["estimate"]
            row.planned_gb = est.peak / GB
            row.detail = f"{est.world_size} proc; plan: {largest_terms(est)}"
        rows.append(row)
    return plan, keys, rows


def stage_command(root: Path, grid: Path, key: str, processes: int) -> list[str]:
    """``sweep run``'s command for the run, with ``peak_probe.py`` in front of the stage module."""
    from prism_lab.harness.executors.placement import launch_command

    cmd = launch_command(root, key, processes, grid=grid)
    i = next(j for j in range(len(cmd) - 1) if cmd[j] == "-m" and cmd[j + 1] == "prism_lab.harness.run_stage")
    return [*cmd[:i], str(PROBE), *cmd[i + 1:]]


def ledger_row(root: Path, key: str) -> tuple[str | None, str | None]:
    try:
        with sqlite3.connect(f"file:{root / 'ledger.sqlite'}?mode=ro", uri=True) as db:
            hit = db.execute("SELECT status, error FROM runs WHERE key = ?", (key,)).fetchone()
    except sqlite3.Error:
        return None, None
    return (hit[0], hit[1]) if hit else (None, None)


def run_rows(plan, keys: list[str], rows: list[Row], grid: Path, out: Path, n_gpus: int, guard: Guard,
             until: float | None) -> None:
    """Run each selected stage run in order, filling its row; a run whose inputs did not finish is skipped."""
    from prism_lab.harness.executors.placement import run_resources

    from benchmarks.gpu.peak_probe import read_peaks

    root = out / "root"
    finished: set[str] = set()
    for key, row in zip(keys, rows):
        run = plan.runs[key]
        missing = [plan.runs[d].kind for d in run.inputs.values() if d in plan.runs and d not in finished]
        if missing:
            row.status = f"skipped: upstream {', '.join(sorted(set(missing)))} did not finish"
            continue
        if not guard.allows(MIN_STAGE_S, until):
            row.status = f"skipped: wall-clock guard ({max(0.0, guard.left(until)):.0f} s left)"
            continue
        res = run_resources(run.config)
        procs = res.processes if res is not None else 1
        peaks, log = out / "peaks" / key[:12], out / "logs" / f"{key[:12]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = base_env({"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(n_gpus)),
                        "PRISM_GPU_PEAK_DIR": str(peaks)})
        rc, row.seconds = run_process(stage_command(root, grid, key, procs), log, guard.left(until), env)
        status, error = ledger_row(root, key)
        peak = read_peaks(peaks)
        if peak:
            row.measured_gb = peak["allocated"] / GB
            row.detail = f"reserved {peak['reserved'] / GB:.2f} GB; {row.detail}"
        if rc == 0 and status == "done":
            row.status = "ok"
            finished.add(key)
        elif rc == 124:
            row.status = f"failed: killed by the wall-clock guard after {row.seconds:.0f} s (log {log})"
        else:
            row.status = f"failed: {one_line(error) if error else log_error(log)}"
    hide_setup(plan, keys, rows)


def hide_setup(plan, keys: list[str], rows: list[Row]) -> None:
    """The data run is set-up: its row shows only when it failed."""
    for key, row in zip(keys, rows):
        if plan.runs[key].kind == "data" and not row.failed:
            row.extra["hide"] = True
