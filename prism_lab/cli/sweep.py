"""`prism-lab sweep plan|run|status`: expand a grid, run what is pending, show where it stands."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from prism_lab.cli.options import (
    AddressOpt,
    ExecutorName,
    ExecutorOpt,
    Format,
    FormatOpt,
    GridArg,
    RootOpt,
    SharedRootOpt,
    WandbMode,
    WorkerRetriesOpt,
    err,
    out,
    resolve_root,
)

sweep_app = typer.Typer(help="Plan, run and inspect grids (experiments/*.yaml).", no_args_is_help=True)


def _load_plan(grid_path: Path, *, check_inputs: bool = False, strict_benchmarks: bool = True):
    """Load and plan a grid; ``check_inputs``: first read its datasets and check its checkpoints
    (`plan` and `run` do, so that no stage ever starts on bad input). ``strict_benchmarks`` False
    (`plan`): a missing official/hub benchmark file is a warning line on stderr, not an error."""
    from prism_lab.harness import planning

    grid = planning.load_grid(grid_path)
    if check_inputs:
        for line in planning.check_inputs(grid, strict_benchmarks=strict_benchmarks):
            err.print(f"warning: {line}", markup=False, highlight=False)
    return planning.build_plan(grid)


def _run_records(plan, root: Path, *, with_metrics: bool) -> list[dict]:
    from prism_lab.harness.ledger import Ledger

    from prism_lab.eval.fingerprint import recorded_fingerprints as eval_fingerprints
    from prism_lab.harness.freshness import recorded_fingerprints, stale_runs

    ledger = Ledger.open_existing(root)
    rows = ledger.get_runs(plan.runs) if ledger else {}
    stale = stale_runs(ledger, rows) if ledger and with_metrics else {}
    done = [k for k, r in rows.items() if r.status == "done"]
    prints = recorded_fingerprints(ledger, done) if ledger and with_metrics else {}
    evals = eval_fingerprints(ledger, [k for k in done if plan.runs[k].kind == "eval"]) if ledger and with_metrics else {}
    records = []
    for key, run in plan.runs.items():
        row = rows.get(key)
        rec = {
            "key": key, "kind": run.kind, "label": run.label, "inputs": run.inputs, "cells": run.cells,
            "status": row.status if row else "new", "config": run.config,
        }
        if with_metrics:
            rec.update({
                "attempts": row.attempts if row else 0,
                "artifact_path": row.artifact_path if row else None,
                "log_path": row.log_path if row else None,
                "error": row.error if row else None,
                "started_at": row.started_at if row else None,
                "finished_at": row.finished_at if row else None,
                "metrics": ledger.last_metrics(key) if ledger and row else {},
                "stale": stale.get(key, []),
                "machine": (prints.get(key) or {}).get("machine"),
            })
            rec["truncated"] = bool(rec["metrics"].get("truncated"))
            if run.kind == "eval":
                rec["eval_fingerprints"] = evals.get(key)
        records.append(rec)
    if ledger:
        ledger.close()
    return records


_STATUS_STYLE = {"done": "green", "running": "yellow", "failed": "red", "blocked": "magenta", "pending": "white",
                 "new": "dim"}


_HEADLINE = ("eval/avg/accuracy", "eval/avg/format_rate", "loss", "reward/mean", "acc/mean", "format/mean",
             "warmup/heldout_acc", "d_acc", "gap/caption", "gap/cot", "format_rate")


def _headline(metrics: dict[str, float], n: int = 4) -> list[tuple[str, float]]:
    """The most telling metrics of a run first (accuracy, loss, reward), then the rest by name."""
    ranked = sorted(metrics.items(), key=lambda kv: (_HEADLINE.index(kv[0]) if kv[0] in _HEADLINE else 99, kv[0]))
    return ranked[:n]


def _print_table(plan, records: list[dict], *, title: str, with_metrics: bool) -> None:
    table = Table(title=title, show_lines=False)
    table.add_column("kind")
    table.add_column("run")
    table.add_column("key")
    table.add_column("cells", justify="right")
    table.add_column("status")
    if with_metrics:
        table.add_column("time", justify="right")
        table.add_column("summary")
    for rec in records:
        style = _STATUS_STYLE.get(rec["status"], "white")
        status = rec["status"] + (" (stale)" if rec.get("stale") else "") + (" (truncated)" if rec.get("truncated") else "")
        row = [rec["kind"], escape(rec["label"]), rec["key"][:12], str(len(rec["cells"])), f"[{style}]{status}[/{style}]"]
        if with_metrics:
            dur = ""
            if rec.get("started_at") and rec.get("finished_at"):
                dur = f"{rec['finished_at'] - rec['started_at']:.0f}s"
            summary = rec.get("error") or (f"made by other code: {rec['stale'][0]}" if rec.get("stale") else "") or ", ".join(
                f"{k}={v:.3g}" for k, v in _headline(rec["metrics"]) if v is not None)
            row += [dur, escape(summary[:80])]
        table.add_row(*row)
    out.print(table)
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec["kind"]] = counts.get(rec["kind"], 0) + 1
    _print_machines(records)
    n_stale = sum(1 for r in records if r.get("stale"))
    if n_stale:
        out.print(f"[yellow]{n_stale} done run(s) were made by other code than the code installed now "
                  f"(`sweep run --rerun-stale` runs them and their dependents again)[/yellow]")
    out.print(f"{len(plan.cells)} cells, {len(records)} stage runs: "
              + ", ".join(f"{n} {k}" for k, n in counts.items()))


def _print_machines(records: list[dict]) -> None:
    """The kinds of machine the done runs were made on, with a warning when they differ in their kernels."""
    from prism_lab.harness.machine import conflicting_machines, group_machines

    kinds = group_machines(rec["machine"] for rec in records if rec.get("status") == "done" and "machine" in rec)
    for kind in kinds:
        if kind["machine"] is None:
            out.print(f"{kind['runs']} done run(s) do not record their machine (made by an older prism-lab)")
        else:
            out.print(f"made on {kind['label']}: {kind['runs']} done run(s)", markup=False, highlight=False)
    if conflicting_machines(kind["machine"] for kind in kinds):
        out.print("[yellow]done runs come from more than one kind of machine: the numbers reproduce bitwise only "
                  "on the kind that made them[/yellow]")


def _print_resources(plan, grid: Path, format: Format) -> None:
    from prism_lab.harness.memory_fit import estimate_runs, largest_terms
    from prism_lab.harness.devices import detect_gpus

    recs = estimate_runs(plan, list(plan.runs), detect_gpus())
    if format is Format.json:
        print(json.dumps([{"key": r["key"], "kind": r["kind"], "label": r["label"], "resources": r["resources"],
                           "params": r["params"], "device_gb": r["device_bytes"] and round(r["device_bytes"] / 1e9, 2),
                           "fits": r["fits"], **r["estimate"].to_dict()} for r in recs], indent=2))
        return
    table = Table(title=f"memory per device of {plan.grid.name} ({grid})")
    for col in ("kind", "run", "procs", "gpus", "dtype", "ckpt", "offload", "params (B)", "peak GB", "device GB",
                "host GB/node", "fits", "largest terms (GB)"):
        table.add_column(col, justify="right" if col[0] in "pdh" and col != "dtype" else "left")
    for r in recs:
        res, est = r["resources"], r["estimate"]
        params = "+".join(f"{n / 1e9:.3g}" for n in r["params"].values())
        fits = "?" if r["fits"] is None else ("yes" if r["fits"] else "[red]NO[/red]")
        table.add_row(r["kind"], r["label"], str(res.get("processes", 1)), str(res.get("gpus", 0)),
                      res.get("param_dtype", "auto"), "on" if res.get("gradient_checkpointing") else "off",
                      "on" if res.get("offload") else "off", params, f"{est.peak / 1e9:.1f}",
                      f"{r['device_bytes'] / 1e9:.0f}" if r["device_bytes"] else "?", f"{est.host_node / 1e9:.0f}", fits,
                      largest_terms(est, top=2))
    out.print(table)
    out.print("peak = sharded state on the device + the training phase (gathered blocks, activations, the loss's "
              "tokens x vocab buffers) and the rollout phase (vLLM's reservation or HF generate's KV cache): the larger "
              "of the two when the engine frees its memory before training (vLLM's sleep mode, HF generate), their "
              "sum when it keeps it; host GB/node = every rank loading its models "
              "in fp32, or its offloaded state; 'fits' allows 90% of the device (and of resources.host_memory_gb).")


@sweep_app.command("plan")
def sweep_plan(
    grid: GridArg, format: FormatOpt = Format.table, root: RootOpt = None,
    resources: Annotated[bool, typer.Option(
        "--resources", help="Instead, estimate every training run's peak memory per device (models counted on "
        "the meta device: imports torch; the datasets need not be on this machine).")] = False,
) -> None:
    """Expand a grid into cells and deduplicated stage runs (nothing is run or written). The grid's local
    datasets and checkpoints are read and checked first (not with --resources); an official benchmark
    file not on this machine is a warning here (`sweep run` refuses it)."""
    plan = _load_plan(grid, check_inputs=not resources, strict_benchmarks=False)
    if resources:
        _print_resources(plan, grid, format)
        return
    records = _run_records(plan, resolve_root(root), with_metrics=False)
    if format is Format.json:
        print(json.dumps([{k: r[k] for k in ("key", "kind", "label", "inputs", "cells", "status")} for r in records],
                         indent=2))
        return
    _print_table(plan, records, title=f"plan of {plan.grid.name} ({grid})", with_metrics=False)


@sweep_app.command("run")
def sweep_run(
    grid: GridArg,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Stage runs to execute in parallel.")] = 1,
    root: RootOpt = None,
    stages: Annotated[Optional[str], typer.Option(
        "--stages", help="Only these stage kinds (comma-separated, e.g. sft,eval); a run is included when its "
        "upstream runs are too.")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--no-retry-failed",
                                               help="Run failed runs again (default) or leave them failed.")] = True,
    wandb: Annotated[Optional[WandbMode], typer.Option("--wandb", help="W&B mode of every stage run "
                  "(default: $PRISM_LAB_WANDB, else $WANDB_MODE, else offline).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the stage commands in dependency order and run nothing; run by hand "
                  "one after another they do the sweep (each plans the grid into the ledger if needed).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    gpus: Annotated[Optional[str], typer.Option(
        "--gpus", help="GPU ids stage runs may use (e.g. 0,1,2,3; default: CUDA_VISIBLE_DEVICES, else every GPU "
        "nvidia-smi lists). Each run gets resources.gpus of them to itself; the others wait.")] = None,
    share_gpus: Annotated[bool, typer.Option(
        "--share-gpus", help="Let stage runs share GPUs instead of waiting for free ones.")] = False,
    rerun_stale: Annotated[bool, typer.Option(
        "--rerun-stale", help="Run again the done runs made by other code than the code installed now (another "
        "prism-lab source or torch/transformers version), and every run downstream of them.")] = False,
    executor: ExecutorOpt = ExecutorName.local,
    address: AddressOpt = None,
    shared_root: SharedRootOpt = None,
    worker_retries: WorkerRetriesOpt = 2,
) -> None:
    """Run every pending stage run of a grid in dependency order; re-running resumes where it stopped."""
    from prism_lab.harness import preflight
    from prism_lab.harness.executors import ExecutorOptions, make_executor
    from prism_lab.harness.executors.scheduler import select_runs
    from prism_lab.harness.executors.placement import launch_command, run_resources

    kinds = {s.strip() for s in stages.split(",")} if stages else None
    request = preflight.RunRequest(executor.value, gpus=gpus, share_gpus=share_gpus, address=address,
                                   shared_root=shared_root.resolve() if shared_root else None, stages=kinds)
    pool = preflight.check_usage(request)
    plan = _load_plan(grid, check_inputs=True)
    root_dir = resolve_root(root).resolve()
    if dry_run:
        for key in select_runs(plan, kinds):
            run = plan.runs[key]
            res = run_resources(run.config)
            cmd = launch_command(root_dir, key, res.processes if res is not None else 1, grid=grid.resolve())
            print(f"{shlex.join(cmd)}   # {run.label}")
        return
    cleared = preflight.check_plan(plan, root_dir, request, pool, select_runs(plan, kinds), rerun_stale=rerun_stale)
    if not rerun_stale and (line := preflight.stale_warning(cleared)):
        err.print(line, style="yellow", markup=False, highlight=False)
    reset = preflight.commit(cleared, rerun_stale=rerun_stale)
    if rerun_stale and cleared.stale:
        err.print(f"--rerun-stale: {len(cleared.stale)} stale run(s); {len(reset)} run(s) made pending again")
    if wandb is not None:  # else the stage processes read the environment (harness/tracking.py)
        os.environ["PRISM_LAB_WANDB"] = wandb.value
    t0 = time.time()
    options = ExecutorOptions(executor.value, workers=workers, gpus=pool, share_gpus=share_gpus, address=address,
                              worker_retries=worker_retries, shared_root=request.shared_root)
    summary = make_executor(root_dir, options, retry_failed=retry_failed, show_progress=not quiet).run(plan, kinds=kinds)
    elapsed = time.time() - t0
    err.print(
        f"sweep {escape(plan.grid.name)}: {len(summary.done)} run(s) finished, {len(summary.skipped)} already done, "
        f"{len(summary.failed)} failed, {len(summary.blocked)} blocked"
        + (f", {len(summary.restarted)} restarted after a crash" if summary.restarted else "")
        + f" in {elapsed:.0f}s"
    )
    if summary.unavailable:
        missing = sorted({plan.runs[k].kind for k in summary.unavailable})
        err.print(f"not run: stage kind(s) {', '.join(missing)} are not available in this build "
                  f"({len(summary.unavailable)} run(s) and their dependents wait for them)")
    err.print(f"ledger: {root_dir / 'ledger.sqlite'}   artifacts: {(options.shared_root or root_dir) / 'runs'}",
              markup=False, highlight=False)
    err.print(f"next: prism-lab sweep status {grid} --root {root_dir}   |   prism-lab report {grid} --root {root_dir}",
              markup=False, highlight=False)
    if not summary.ok:
        raise typer.Exit(1)


def _warn_mixed_eval_fingerprints(records: list[dict]) -> None:
    """One warning line on stderr per benchmark whose done eval runs were made under different evaluation
    fingerprints (prism_lab/eval/fingerprint.py): the status and the report would mix protocols."""
    from prism_lab.eval.fingerprint import mixed_fingerprints, mixed_warning

    per_run = {r["key"]: r["eval_fingerprints"] for r in records if r.get("eval_fingerprints")}
    for mixed in mixed_fingerprints(per_run):
        err.print(f"warning: {mixed_warning(mixed)}", markup=False, highlight=False)


@sweep_app.command("status")
def sweep_status(grid: GridArg, format: FormatOpt = Format.table, root: RootOpt = None) -> None:
    """Status of every stage run of a grid, with the latest metrics of each."""
    plan = _load_plan(grid)
    records = _run_records(plan, resolve_root(root), with_metrics=True)
    _warn_mixed_eval_fingerprints(records)
    if format is Format.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "config"} for r in records], indent=2, default=str))
        return
    _print_table(plan, records, title=f"status of {plan.grid.name} ({resolve_root(root)})", with_metrics=True)
