"""The `eval` stage: evaluate the input checkpoint on the configured benchmarks (docs/prism_method.md §8).

Inputs: ``checkpoint`` (an artifact whose HF checkpoint is ``<path>/model``) and ``data`` (a data run;
its catalog's ``bench_dir`` holds the benchmark TSVs). Writes ``predictions/<benchmark>.jsonl`` and
``results.json`` into the run directory, logs ``eval/<bench>/{accuracy,format_rate,n,...}`` and
``eval/avg/accuracy`` at step 0, and returns the same metrics as the run's summary; every item's score
goes to the ledger's ``item_scores`` (the report's paired item bootstrap), each benchmark's evaluation
fingerprint to run.json (``eval_fingerprints``; the model judge's model, version and calls under ``judge``) and to
the ledger (an ``eval_fingerprint`` event; see
``prism_lab.eval.fingerprint``), and the drift measurements
(``drift/*``, ``stages/drift.py``) are logged with the benchmark metrics. Predictions are cached under
``<root>/cache/predictions`` (see ``prism_lab.eval.predictions``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from prism_lab.config.eval import EvalConfig
from prism_lab.eval.fingerprint import FINGERPRINT_EVENT
from prism_lab.stages.artifacts import (
    PREDICTION_CACHE,
    checkpoint_dir_of,
    checkpoint_identity,
)

if TYPE_CHECKING:  # the harness hands every runner its context; stages never import the harness
    from prism_lab.harness.context import StageContext

def _default_benchmarks(bench_dir: str | None) -> list[str]:
    """Every registered benchmark whose TSV is in ``bench_dir`` (used when the config lists none)."""
    from prism_lab.eval.benchmarks import all_benchmarks

    if not bench_dir:
        return []
    return [name for name, spec in all_benchmarks().items() if spec.file and (Path(bench_dir) / spec.file).is_file()]


def run(ctx: StageContext) -> dict:
    from prism_lab.data.catalog import DataCatalog
    from prism_lab.eval.run import evaluate_checkpoint

    cfg: EvalConfig = ctx.config  # type: ignore[assignment]
    ckpt = ctx.input("checkpoint")
    if cfg.bench_dir:
        bench_dir = cfg.bench_dir
    elif "data" in ctx.inputs:
        bench_dir = DataCatalog.load(ctx.input("data").path).bench_dir
    else:
        bench_dir = os.environ.get("LMUData")
    names = list(cfg.benchmarks) or _default_benchmarks(bench_dir)
    if not cfg.benchmarks:
        ctx.log.info("eval: no benchmarks configured; using those found in %s: %s", bench_dir,
                     ", ".join(names) or "(none)")
    results = evaluate_checkpoint(
        checkpoint_dir_of(ckpt.path), names, cfg, bench_dir=bench_dir,
        cache_dir=Path(ctx.root) / PREDICTION_CACHE, checkpoint_key=checkpoint_identity(ckpt.key, ckpt.path), out_dir=ctx.out_dir, log=ctx.log,
    )
    metrics = dict(results["metrics"])
    if cfg.drift:
        from prism_lab.stages.drift import measure_drift

        metrics.update(measure_drift(ctx, cfg, checkpoint_dir_of(ckpt.path)))
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    ctx.log_metrics(0, metrics)
    for bench, scores in results["items"].items():
        ctx.ledger.log_item_scores(ctx.key, bench, scores)
    ctx.ledger.event(FINGERPRINT_EVENT, json.dumps(results["fingerprints"], sort_keys=True), run_key=ctx.key)
    ctx.record["eval_fingerprints"] = results["fingerprints"]
    if results.get("judge") is not None:
        ctx.record["judge"] = results["judge"]
    for bench, rows in results["samples"].items():
        ctx.tracker.log_table(f"eval_samples/{bench}", ["index", "prompt", "image", "response", "score"],
                              [[r["index"], r["prompt"], r["image"], r["response"], r["score"]] for r in rows])
    return metrics
