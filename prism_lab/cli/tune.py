"""`prism-lab tune SPACE`: an Optuna study whose trials are harness cells.

Registered in prism_lab/cli/__init__.py as the `tune` command.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_lab.cli.options import AddressOpt, ExecutorName, ExecutorOpt, SharedRootOpt, WandbMode, WorkerRetriesOpt


def tune(
    space: Annotated[Path, typer.Argument(
        help="Search-space file, e.g. sweeps/disc.yaml: base grid cell, parameters (ranges, log scale, "
        "choices), objective(s), optional pruning.", show_default=False)],
    root: Annotated[Optional[Path], typer.Option(
        "--root", help="Directory holding ledger.sqlite and runs/ (default: $PRISM_LAB_ROOT or ./runs). "
        "Trials share its stage runs: SFT and other unchanged stages run once per study.")] = None,
    trials: Annotated[int, typer.Option(
        "--trials", "-n", min=0,
        help="Total number of finished (complete or pruned) trials the STUDY should have. Restarting, or "
        "several processes on one storage, converge to this total together. 0 = only rewrite the outputs.")] = 20,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=1,
        help="Trials run in parallel by this process. >1 needs a journal file or an RDB storage (the default "
        "storage then is a journal file).")] = 1,
    storage: Annotated[Optional[str], typer.Option(
        "--storage",
        help="Optuna storage: sqlite:///study.db (one worker), journal:study.journal (parallel workers and "
        "processes on one file system) or an RDB URL (postgresql://..., mysql://...). Default: "
        "<root>/tune/<study>/study.db, or study.journal with --workers > 1. Open it with optuna-dashboard.")] = None,
    study: Annotated[Optional[str], typer.Option(
        "--study", help="Study name (default: the search space's `name`, else its file name). An existing study "
        "of that name is resumed.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Where best.yaml (or pareto-*.yaml), summary.md and plot.png go "
        "(default: <root>/tune/<study>/).")] = None,
    enqueue_defaults: Annotated[Optional[bool], typer.Option(
        "--enqueue-defaults/--no-enqueue-defaults",
        help="Run the base grid's values (the paper's defaults) as the first trial of a new study "
        "(default: the search space's `enqueue_defaults`, true unless set).", show_default=False)] = None,
    max_retries: Annotated[int, typer.Option(
        "--max-retries", min=0, help="Times a failed or killed trial is retried with the same parameters "
        "before it stays FAIL.")] = 2,
    grace_period: Annotated[float, typer.Option(
        "--grace-period", min=1.0, help="Seconds without heartbeat after which a running trial of a worker on "
        "another host counts as dead (same-host workers are checked by pid at once).")] = 600.0,
    heartbeat_interval: Annotated[float, typer.Option(
        "--heartbeat-interval", min=0.1, help="Seconds between a running trial's heartbeats.")] = 30.0,
    stage_workers: Annotated[int, typer.Option(
        "--stage-workers", min=1, help="Stage runs executed in parallel inside one trial.")] = 1,
    wandb: Annotated[Optional[WandbMode], typer.Option("--wandb", help="W&B mode of every stage run "
                  "(default: $PRISM_LAB_WANDB, else $WANDB_MODE, else offline).")] = None,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
    shared_root: SharedRootOpt = None,
    worker_retries: WorkerRetriesOpt = 2,
    rerun_stale: Annotated[bool, typer.Option(
        "--rerun-stale", help="Run again the done runs made by other code than the code installed now (another "
        "prism-lab source or torch/transformers version) instead of reusing them with a warning.")] = False,
) -> None:
    """Tune a grid cell with Optuna (ask-and-tell): every trial is a one-cell sweep run through the planner, the ledger and the executor, so runs shared between trials are computed once.

    Resumable and parallel: re-running the command continues the study; trials of killed workers are marked FAIL and retried. Writes the best parameters as a grid for `prism-lab sweep run`, a Markdown summary with parameter importances, and a plot.
    """  # noqa: E501
    from prism_lab.harness import preflight
    from prism_lab.harness.executors import ExecutorOptions
    from prism_lab.harness.planning import check_inputs
    from prism_lab.tune.space import load_space
    from prism_lab.tune.study import TuneOptions
    from prism_lab.tune.study import tune as run_tune

    request = preflight.RunRequest(executor.value, address=address,
                                   shared_root=shared_root.resolve() if shared_root else None)
    preflight.check_usage(request)  # before the search space, the study and the ledger
    spec = load_space(space)
    check_inputs(spec.base)  # the base grid's datasets and checkpoints, before any trial starts
    root_dir = Path(root or os.environ.get("PRISM_LAB_ROOT") or "runs")
    cleared = preflight.check_plan(spec.reference, root_dir.resolve(), request, None, list(spec.reference.runs),
                                   rerun_stale=rerun_stale)  # the base cell fits; its runs other code made
    if wandb is not None:  # else the stage processes read the environment (harness/tracking.py)
        os.environ["PRISM_LAB_WANDB"] = wandb.value
    options = TuneOptions(root=root_dir, trials=trials, workers=workers, storage=storage, study_name=study,
                          out_dir=out, enqueue_defaults=enqueue_defaults, max_retries=max_retries,
                          grace_period=grace_period, heartbeat_interval=heartbeat_interval,
                          stage_workers=stage_workers, rerun_stale=rerun_stale,
                          executor=ExecutorOptions(executor.value, address=address, worker_retries=worker_retries,
                                                   shared_root=request.shared_root))
    result = run_tune(spec, options, cleared=cleared)
    c = result.counts
    print(f"study {result.study_name}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.items()))
          + f"; this process ran {len(result.ran)} trial(s)", file=sys.stderr)
    for name, path in result.outputs.items():
        print(f"{name}: {path}", file=sys.stderr)
    print(f"dashboard: {result.storage.dashboard}", file=sys.stderr)
    if "best" in result.outputs:
        print(f"next: prism-lab sweep run {result.outputs['best']}", file=sys.stderr)

