"""`prism-lab eval CHECKPOINT -b NAME`: evaluate one checkpoint outside any sweep.

The checkpoint is recorded in the ledger as an external run (keyed by a fingerprint of its files)
and the evaluation as an ordinary `eval` run, so the record, metrics, predictions and cache are the
same as the `eval` stage's inside a sweep.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_lab.cli.errors import one_line
from prism_lab.cli.options import Format, FormatOpt
from prism_lab.config.base import SEED_MAX
from prism_lab.errors import CheckpointError, PrismError


def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: an HF model directory or a stage run directory.")],
    benchmark: Annotated[list[str], typer.Option("--benchmark", "-b", help="Benchmark name (repeatable).")],
    backend: Annotated[str, typer.Option("--backend", help="`builtin`, `vlmevalkit` or `lmms_eval`.")] = "builtin",
    bench_dir: Annotated[Optional[Path], typer.Option(
        "--bench-dir", help="Directory of the benchmark files: TSVs, generated lm-eval data (default: $LMUData).")] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="Ledger root (default: $PRISM_LAB_ROOT or ./runs).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Generation batch size.")] = 16,
    temperature: Annotated[Optional[float], typer.Option(help="Override the benchmarks' temperature (0 = greedy).")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Override the benchmarks' top-p.")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Override the benchmarks' max_new_tokens.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N items of each benchmark.")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Sampling seed.")] = 0,
    format: FormatOpt = Format.table,
) -> None:
    """Evaluate one checkpoint on benchmarks; writes the same ledger record as the `eval` stage.

    Progress and logs go to stderr; stdout carries the result only (`--format json`: one JSON document).
    `kind: lmeval` benchmarks run through lm-eval whatever `--backend` says."""
    try:
        check_overrides(limit=limit, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        result = _evaluate(checkpoint, benchmark, backend, bench_dir, root, batch_size, temperature, top_p,
                           max_new_tokens, limit, seed)
    except PrismError as exc:
        if format == Format.json:  # a tool reading stdout still gets exactly one JSON document
            typer.echo(json.dumps({"error": one_line(str(exc))}))
        raise
    if format == Format.json:
        typer.echo(json.dumps(result, indent=2))
        return
    typer.echo(f"eval run {result['run_key'][:12]} -> {result['artifact']}")
    for name, value in result["metrics"].items():
        typer.echo(f"  {name:<48} {value:.4f}" if value is not None else f"  {name:<48} -")


def check_overrides(*, limit: int | None, temperature: float | None, top_p: float | None,
                    max_new_tokens: int | None) -> None:
    """PrismError naming the option and its allowed range for an override out of range (EvalConfig's bounds)."""
    if limit is not None and limit < 1:
        raise PrismError(f"--limit: expected an integer >= 1 (items per benchmark), got {limit}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise PrismError(f"--max-new-tokens: expected an integer >= 1, got {max_new_tokens}")
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise PrismError(f"--temperature: expected a number >= 0 (0 = greedy), got {temperature}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise PrismError(f"--top-p: expected a number in (0, 1], got {top_p}")


def _needs_bench_dir(spec) -> bool:
    """A TSV benchmark, or an lm-eval task reading a generated data file (hub tasks read none)."""
    return not spec.is_task or spec.file is not None


def _check_benchmark(spec, bdir: Path | None) -> None:
    """Everything a benchmark reads is here and well formed, before anything is written."""
    if spec.kind == "lmms":  # its dataset is looked up when it runs (not cached: skipped with one line)
        return
    if spec.kind == "lmeval":
        from prism_lab.eval.lmeval import require_task_data
        from prism_lab.eval.lmeval_tasks import check_task_reference

        check_task_reference(spec)
        require_task_data(spec, bdir)
        return
    from prism_lab.data.bench_tsv import read_benchmark_tsv
    from prism_lab.eval.run import benchmark_tsv

    read_benchmark_tsv(benchmark_tsv(spec, bdir))  # a missing or malformed TSV fails before anything is written


def _check_lmms(specs, backend: str) -> None:
    """lmms-eval's virtualenv is there (ConfigError, one line, before anything is written), unless every benchmark
    it would run is a ``kind: lmms`` task whose dataset is not local (those are skipped with one line)."""
    from prism_lab.eval.lmeval import TaskUnavailable
    from prism_lab.eval.lmms.backend import find_lmms_python, require_local_dataset

    for spec in specs:
        if spec.kind == "lmms":
            try:
                require_local_dataset(spec)
            except TaskUnavailable:
                continue
        elif spec.kind == "lmeval" or backend != "lmms_eval":
            continue
        find_lmms_python()
        return


def _evaluate(checkpoint: Path, benchmark: list[str], backend: str, bench_dir: Path | None, root: Path | None,
              batch_size: int, temperature: float | None, top_p: float | None, max_new_tokens: int | None,
              limit: int | None, seed: int) -> dict:
    """Check, record and run the evaluation; returns {"run_key", "artifact", "metrics"}."""
    from prism_lab.cli.options import resolve_root, stdout_to_stderr
    from prism_lab.config.eval import EvalConfig
    from prism_lab.eval.backends import EVAL_BACKENDS
    from prism_lab.eval.fingerprint import protocol_key
    from prism_lab.eval.run import checkpoint_fingerprint
    from prism_lab.harness.ledger import Ledger, run_is_stale
    from prism_lab.harness.plan import content_key
    from prism_lab.harness.run_stage import execute
    from prism_lab.harness.stage_kinds import STAGE_KINDS

    if backend not in EVAL_BACKENDS or backend == "lmeval":
        raise PrismError(f"--backend: unknown evaluation backend {backend!r}; known: {', '.join(EVAL_BACKENDS.names())}")
    checkpoint = checkpoint.resolve()
    if not checkpoint.exists():
        raise CheckpointError(f"{checkpoint}: no such checkpoint directory")
    from prism_lab.stages.artifacts import checkpoint_dir_of

    model_dir = checkpoint_dir_of(checkpoint)
    from prism_lab.eval.benchmarks import load_benchmark

    specs = []
    for name in benchmark:
        try:
            specs.append(load_benchmark(name))
        except Exception as exc:  # ConfigError with the known names
            raise PrismError(f"--benchmark: {exc}") from None
    bdir = bench_dir or (Path(os.environ["LMUData"]) if os.environ.get("LMUData") else None)
    if bdir is None and any(_needs_bench_dir(s) for s in specs):
        raise PrismError("--bench-dir is required (or set $LMUData to the directory of the benchmark files)")
    for spec in specs:
        _check_benchmark(spec, bdir)
    if backend == "lmms_eval" or any(s.kind == "lmms" for s in specs):
        _check_lmms(specs, backend)
    from prism_lab.models.checkpoint import inspect_checkpoint
    from prism_lab.models.weight_check import verify_weights

    inspect_checkpoint(model_dir)
    verify_weights(model_dir)
    cfg = EvalConfig(benchmarks=list(benchmark), backend=backend, batch_size=batch_size, temperature=temperature,
                     top_p=top_p, max_new_tokens=max_new_tokens, limit=limit, seed=seed,
                     bench_dir=str(bdir.resolve()) if bdir is not None else None)
    ledger = Ledger(resolve_root(root).resolve())
    fingerprint = checkpoint_fingerprint(model_dir)
    ckpt_key = hashlib.sha256(f"external-checkpoint:{fingerprint}".encode()).hexdigest()
    ledger.add_run(ckpt_key, "checkpoint", f"checkpoint {checkpoint}", {"path": str(checkpoint)}, {},
                   status="done", artifact_path=str(model_dir))
    config = cfg.model_dump(mode="json")
    inputs = {"checkpoint": ckpt_key}
    key = content_key("eval", STAGE_KINDS.get("eval").version, config, inputs,
                      protocol_key(config["benchmarks"], config["backend"]))
    ledger.add_run(key, "eval", f"eval {checkpoint.name}", config, inputs)
    row = ledger.get_run(key)
    if row.status == "running" and run_is_stale(row):  # left by an eval that was killed
        if ledger.set_status(key, "pending", only_if=("running",)):
            ledger.event("restarted", f"stale eval claim (pid {row.owner_pid}) released", run_key=key)
    if row.status != "done":
        if not ledger.claim(key, owner_pid=os.getpid(), allowed=("pending", "failed", "blocked")):
            raise PrismError(f"evaluation {key[:12]} is already running in another process")
        with stdout_to_stderr():
            rc = execute(ledger.root, key)
        if rc != 0:
            raise PrismError(f"evaluation failed: {ledger.get_run(key).error}")
        row = ledger.get_run(key)
    metrics = dict(sorted(ledger.last_metrics(key).items()))
    return {"run_key": key, "artifact": row.artifact_path, "metrics": metrics}
