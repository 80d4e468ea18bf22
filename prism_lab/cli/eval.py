"""`prism-lab eval CHECKPOINT -b NAME`: evaluate one checkpoint outside any sweep.

The checkpoint is recorded in the ledger as an external run (keyed by a fingerprint of its files)
and the evaluation as an ordinary `eval` run, so the record, metrics, predictions and cache are the
same as the `eval` stage's inside a sweep.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from prism_lab.cli.options import Format, FormatOpt
from prism_lab.config.base import SEED_MAX
from prism_lab.errors import CheckpointError, PrismError


def eval_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint: an HF model directory or a stage run directory.")],
    benchmark: Annotated[list[str], typer.Option("--benchmark", "-b", help="Benchmark name (repeatable).")],
    backend: Annotated[str, typer.Option("--backend", help="`builtin` or `vlmevalkit`.")] = "builtin",
    bench_dir: Annotated[Optional[Path], typer.Option(
        "--bench-dir", help="Directory of benchmark TSVs (default: $LMUData).")] = None,
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
    from prism_lab.cli.options import resolve_root, stdout_to_stderr
    from prism_lab.config.eval import EvalConfig
    from prism_lab.eval.backends import EVAL_BACKENDS
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
    bdir = bench_dir or (Path(os.environ["LMUData"]) if os.environ.get("LMUData") else None)
    if bdir is None:
        raise PrismError("--bench-dir is required (or set $LMUData to the directory of the benchmark TSVs)")
    from prism_lab.eval.benchmarks import load_benchmark

    from prism_lab.data.bench_tsv import read_benchmark_tsv
    from prism_lab.eval.run import benchmark_tsv

    for name in benchmark:
        try:
            spec = load_benchmark(name)
        except Exception as exc:  # ConfigError with the known names
            raise PrismError(f"--benchmark: {exc}") from None
        read_benchmark_tsv(benchmark_tsv(spec, bdir))  # a missing or malformed TSV fails before anything is written
    from prism_lab.models.checkpoint import inspect_checkpoint, verify_weights

    inspect_checkpoint(model_dir)
    verify_weights(model_dir)
    cfg = EvalConfig(benchmarks=list(benchmark), backend=backend, batch_size=batch_size, temperature=temperature,
                     top_p=top_p, max_new_tokens=max_new_tokens, limit=limit, seed=seed,
                     bench_dir=str(bdir.resolve()))
    ledger = Ledger(resolve_root(root).resolve())
    fingerprint = checkpoint_fingerprint(model_dir)
    ckpt_key = hashlib.sha256(f"external-checkpoint:{fingerprint}".encode()).hexdigest()
    ledger.add_run(ckpt_key, "checkpoint", f"checkpoint {checkpoint}", {"path": str(checkpoint)}, {},
                   status="done", artifact_path=str(model_dir))
    config = cfg.model_dump(mode="json")
    inputs = {"checkpoint": ckpt_key}
    key = content_key("eval", STAGE_KINDS.get("eval").version, config, inputs)
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
    if format == Format.json:
        typer.echo(json.dumps({"run_key": key, "artifact": row.artifact_path, "metrics": metrics}, indent=2))
        return
    typer.echo(f"eval run {key[:12]} -> {row.artifact_path}")
    for name, value in metrics.items():
        typer.echo(f"  {name:<48} {value:.4f}" if value is not None else f"  {name:<48} -")
