"""Evaluate one checkpoint on a list of benchmarks: the body of the `eval` stage and of a standalone
command (``python -m prism_lab.eval.run CHECKPOINT --bench-dir DIR -b synth-perception ...``).

For every benchmark: read its TSV, resolve the generation settings (YAML overridden by the EvalConfig),
look the predictions up in the cache, generate and score on a miss, then write
``<out_dir>/predictions/<benchmark>.jsonl``. ``<out_dir>/results.json`` collects per-benchmark metrics,
settings, cache keys and evaluation fingerprints (``prism_lab.eval.fingerprint``; also under
``"fingerprints"``) and, when ``eval.judge`` is set, the model judge (``"judge"``: its model, served version,
calls; ``prism_lab.eval.judge``: asked about every answer the rule did not accept); the returned dict has the same content, with flat ledger metrics under
``"metrics"``::

    eval/<bench>/accuracy, eval/<bench>/format_rate, eval/<bench>/n, eval/<bench>/mean_response_tokens,
    eval/<bench>/chance, eval/<bench>/majority         (TSV benchmarks: baselines of the items evaluated)
    eval/avg/accuracy, eval/avg/format_rate              (the vision benchmarks: the paper's Avg)
    eval/avg_retention/accuracy                          (the text-retention lm-eval tasks, if any)

Accuracy and format rate are fractions in [0, 1]; a metric a benchmark does not have (format rate of an
lm-eval task) is not logged. ``chance`` and ``majority`` (``prism_lab.eval.baselines``) are properties of the
benchmark file and ``limit``, the same for every checkpoint, cached or not; they never enter ``eval/avg/*``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prism_lab.config.eval import EvalConfig
from prism_lab.errors import ConfigError, DataError, PrismError
from prism_lab.eval.backends import BenchmarkResult, get_backend_class, resolve_settings
from prism_lab.eval.baselines import chance, majority
from prism_lab.prompts import Prompting
from prism_lab.eval.benchmarks import RETENTION_GROUP, BenchmarkSpec, load_benchmark
from prism_lab.eval.fingerprint import benchmark_fingerprint
from prism_lab.eval.judge import VERDICT_CACHE_DIR, JudgeClient, judge_rows
from prism_lab.eval.predictions import PredictionCache, cache_key, file_sha256, write_json_atomic, write_jsonl_atomic

__all__ = ["RESULTS_FILE", "PREDICTIONS_DIR", "benchmark_tsv", "checkpoint_fingerprint", "evaluate_checkpoint", "main"]

RESULTS_FILE = "results.json"
#: Sample generations per benchmark an eval run logs as a W&B table.
SAMPLE_ROWS = 8
PREDICTIONS_DIR = "predictions"

#: Files up to this size are content-hashed by :func:`checkpoint_fingerprint`; larger ones by size+mtime.
_FULL_HASH_LIMIT = 256 << 20

Log = logging.Logger | Callable[[str], Any] | None


def _emit(log: Log, msg: str) -> None:
    if log is None:
        return
    if callable(getattr(log, "info", None)):
        log.info(msg)  # type: ignore[union-attr]
    else:
        log(msg)  # type: ignore[operator]


def checkpoint_fingerprint(checkpoint_dir: str | Path) -> str:
    """A content key for a checkpoint directory that no stage produced (standalone evaluation).

    sha256 over every file's relative path and content (files over 256 MiB: path, size and mtime).
    """
    d = Path(checkpoint_dir)
    if not d.is_dir():
        raise PrismError(f"checkpoint directory {d} does not exist")
    h = hashlib.sha256(b"prism-lab checkpoint v1\0")
    for p in sorted(x for x in d.rglob("*") if x.is_file()):
        rel = p.relative_to(d).as_posix()
        st = p.stat()
        h.update(rel.encode() + b"\0")
        if st.st_size <= _FULL_HASH_LIMIT:
            h.update(file_sha256(p).encode())
        else:
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return "ckpt-" + h.hexdigest()


def benchmark_tsv(spec: BenchmarkSpec, bench_dir: str | Path | None) -> Path:
    """Where a benchmark's TSV is: ``<bench_dir>/<file>``; official VLMEvalKit benchmarks not found there
    are looked up in $LMUData (or ~/LMUData). A missing file raises DataError saying which file, where it
    must go and how to get it."""
    candidates: list[Path] = []
    if bench_dir is not None:
        candidates.append(Path(bench_dir) / spec.file)
    if spec.source == "vlmevalkit":
        candidates.append(spec.tsv_path())
    if not candidates:
        raise DataError(f"benchmark {spec.name!r}: a synth benchmark needs the data run's benchmark directory "
                        f"(bench_dir) to find {spec.file}")
    for path in candidates:
        if path.is_file():
            return path
    if spec.source == "vlmevalkit":
        from prism_lab.eval.vlmeval.datasets import missing_file_message

        raise DataError(missing_file_message(spec, candidates[-1]))
    raise DataError(f"benchmark {spec.name!r}: TSV file {spec.file} not found; expected it at {candidates[0]} "
                    f"(regenerate the data run, or point --bench-dir at the directory holding it)")


def _as_config(cfg: EvalConfig | dict | None) -> EvalConfig:
    if cfg is None:
        return EvalConfig()
    if isinstance(cfg, EvalConfig):
        return cfg
    return EvalConfig.model_validate(cfg)


def _finite(x: Any) -> Any:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _backend_name(spec: BenchmarkSpec, cfg: EvalConfig) -> str:
    """lm-eval tasks always go to the lm-eval wing, lmms-eval tasks to lmms-eval; the rest to the configured
    backend."""
    return {"lmeval": "lmeval", "lmms": "lmms_eval"}.get(spec.kind, cfg.backend)


def _source(spec: BenchmarkSpec, bench_dir: str | Path | None) -> tuple[Path | None, str]:
    """(the benchmark's data file or None, its content fingerprint for the cache key)."""
    if not spec.is_task:
        path = benchmark_tsv(spec, bench_dir)
        return path, file_sha256(path)
    if spec.kind == "lmms":  # the task's definition (its data is the cached dataset the task names)
        from prism_lab.eval.fingerprint import spec_sha256

        return None, spec_sha256(spec)
    from prism_lab.eval.lmeval import task_fingerprint

    path = Path(bench_dir) / spec.file if spec.file and bench_dir is not None else None
    return path, task_fingerprint(spec, path)


def sample_rows(rows: Sequence[dict[str, Any]], items: Sequence[Any]) -> list[dict[str, Any]]:
    """The first SAMPLE_ROWS predictions with their prompt, first image (None for text-only items), response and
    score: the sample-generation table an eval run logs to W&B."""
    images = {str(it.index): (it.images[0] if it.image_refs else None) for it in items}
    out = []
    for r in rows[:SAMPLE_ROWS]:
        score = float(r["score"]) if r.get("score") is not None else float(bool(r.get("correct")))
        out.append({"index": str(r.get("index")), "prompt": str(r.get("prompt") or r.get("question") or ""),
                    "image": images.get(str(r.get("index"))), "response": str(r.get("prediction") or ""),
                    "score": score})
    return out


def item_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """item index -> score of scored prediction rows (``score`` when a backend gives one, else correct 0/1)."""
    return {str(r.get("index")): float(r["score"] if r.get("score") is not None else bool(r.get("correct")))
            for r in rows}


def _benchmark_specs(names: Sequence[str | BenchmarkSpec], cfg: EvalConfig,
                     search_dirs: Sequence[str | Path] | None) -> list[BenchmarkSpec]:
    """The specs of ``names`` (names are looked up); a benchmark listed twice, or a TSV benchmark with the
    ``lmeval`` backend, is an error."""
    specs = [b if isinstance(b, BenchmarkSpec) else load_benchmark(b, search_dirs) for b in names]
    dup = sorted({s.name for s in specs if sum(t.name == s.name for t in specs) > 1})
    if dup:
        raise PrismError(f"eval: benchmark(s) listed twice: {', '.join(dup)}")
    if cfg.backend == "lmeval" and any(s.kind != "lmeval" for s in specs):
        raise ConfigError("eval.backend: `lmeval` runs only `kind: lmeval` benchmarks (they go to lm-eval with any "
                          "backend); use `builtin` or `vlmevalkit` for TSV benchmarks")
    return specs


def _ledger_metrics(name: str, m: dict[str, Any]) -> dict[str, float]:
    """One benchmark's metrics as the ledger records them (``eval/<name>/...``; non-finite values left out)."""
    out = {f"eval/{name}/{k}": m[k] for k in ("accuracy", "format_rate", "mean_response_tokens")
           if m[k] is not None and math.isfinite(m[k])}
    out[f"eval/{name}/n"] = float(m["n"])
    return out


def _baselines(spec: BenchmarkSpec, items: Sequence[Any]) -> dict[str, float]:
    """``{"chance", "majority"}`` of the items evaluated (after ``limit``); empty for lm-eval tasks, whose
    items the harness never sees (and for no items)."""
    if spec.is_task or not items:
        return {}
    return {"chance": chance(items, spec.kind), "majority": majority(items)}


def _averages(specs: Sequence[BenchmarkSpec], per_bench: dict[str, Any]) -> dict[str, float]:
    """``eval/avg/*`` over the vision benchmarks and ``eval/avg_retention/*`` over the text-retention group."""
    groups = {s.name: s.group for s in specs}
    vision = [b for name, b in per_bench.items() if groups[name] != RETENTION_GROUP]
    retention = [b for name, b in per_bench.items() if groups[name] == RETENTION_GROUP]
    metrics: dict[str, float] = {}
    for prefix, members in (("avg", vision), ("avg_retention", retention)):
        accs = [b["accuracy"] for b in members if b["accuracy"] is not None]
        fmts = [b["format_rate"] for b in members if b["format_rate"] is not None]
        if accs:
            metrics[f"eval/{prefix}/accuracy"] = sum(accs) / len(accs)
        if fmts:
            metrics[f"eval/{prefix}/format_rate"] = sum(fmts) / len(fmts)
    return metrics


def _bench_entry(spec: BenchmarkSpec, result: BenchmarkResult, path: Path | None, sha: str, key: str, n_noimg: int,
                 base: dict[str, float], fingerprint: dict[str, Any]) -> dict[str, Any]:
    """One benchmark's entry of results.json: its metrics, where its data came from, its settings, cache key and
    evaluation fingerprint, and its baselines (``base``)."""
    return {
        **{k: _finite(v) for k, v in result.metrics.items()},
        "kind": spec.kind, "group": spec.group, "file": str(path) if path else None, "file_sha256": sha,
        "settings": result.settings.to_dict(), "cache_key": key, "cache_hit": result.cached,
        "fingerprint": fingerprint,
        "skipped_noimg": n_noimg, **({"info": result.info} if result.info else {}),
        **base,
    }


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    benchmarks: Sequence[str | BenchmarkSpec] | None,
    cfg: EvalConfig | dict | None,
    *,
    bench_dir: str | Path | None,
    cache_dir: str | Path | None,
    checkpoint_key: str | None,
    out_dir: str | Path | None = None,
    log: Log = None,
    progress: bool = True,
    prompting: Prompting | None = None,
    benchmark_search_dirs: Sequence[str | Path] | None = None,
) -> dict[str, Any]:
    """Evaluate ``checkpoint_dir`` on ``benchmarks`` (names or specs; None = ``cfg.benchmarks``).

    ``bench_dir``: directory of the benchmark TSVs (the data catalog's ``bench_dir``).
    ``cache_dir``: prediction cache directory (``<root>/cache/predictions``; None = no cache).
    ``checkpoint_key``: the checkpoint's content key (the producing run's key; None = fingerprint the
    directory). ``out_dir``: where predictions/ and results.json go (None = write nothing).
    ``prompting``: override the checkpoint's ``prism_prompting.json``.
    Returns the results dict (see the module doc); ``results["metrics"]`` are the ledger metrics and
    ``results["items"]`` the per-item scores (benchmark -> index -> score) for the paired item bootstrap.
    An lm-eval task whose data is not available offline is skipped (``results["skipped"]``), not failed.
    """
    cfg = _as_config(cfg)
    names = list(cfg.benchmarks if benchmarks is None else benchmarks)
    if not names:
        raise PrismError("eval: no benchmarks to evaluate (set eval.benchmarks)")
    specs = _benchmark_specs(names, cfg, benchmark_search_dirs)
    # Fail on a missing TSV before any model is loaded.
    sources = {s.name: _source(s, bench_dir) for s in specs}
    ckpt_key = checkpoint_key or checkpoint_fingerprint(checkpoint_dir)
    prompting = prompting or Prompting.from_checkpoint(checkpoint_dir)
    backends: dict[str, Any] = {}
    judge = _judge_client(cfg, cache_dir)  # asks the endpoint which model it serves: fails before any generation

    def backend_for(name: str):
        if name not in backends:
            extra = {"bench_dir": bench_dir} if name == "lmeval" else {}
            backends[name] = get_backend_class(name)(batch_size=cfg.batch_size, prompting=prompting,
                                                     threads=cfg.threads, log=log, progress=progress, **extra)
            backends[name].judge = judge if name == "builtin" else None
        return backends[name]

    cache = PredictionCache(cache_dir) if cache_dir is not None else None
    out = Path(out_dir) if out_dir is not None else None
    per_bench: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    items_out: dict[str, dict[str, float]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    metrics: dict[str, float] = {}
    t_all = time.perf_counter()
    try:
        for spec in specs:
            path, sha = sources[spec.name]
            try:
                result, key, n_noimg, items = _run_one(spec, cfg, path, sha, ckpt_key, checkpoint_dir, prompting,
                                                      backend_for(_backend_name(spec, cfg)), cache, log)
            except _Skip as e:
                skipped[spec.name] = str(e)
                _emit(log, f"eval {spec.name}: skipped ({e})")
                continue
            m = result.metrics
            if out is not None:
                write_jsonl_atomic(out / PREDICTIONS_DIR / f"{spec.name}.jsonl", result.rows)
            base = _baselines(spec, items)
            fp = benchmark_fingerprint(spec, sha, prompting, result.settings, backend_for(_backend_name(spec, cfg)))
            per_bench[spec.name] = _bench_entry(spec, result, path, sha, key, n_noimg, base, fp)
            items_out[spec.name] = item_scores(result.rows)
            metrics.update(_ledger_metrics(spec.name, m))
            metrics.update({f"eval/{spec.name}/{k}": v for k, v in base.items()})
            samples[spec.name] = sample_rows(result.rows, items[:SAMPLE_ROWS])
            fmt = "n/a" if m["format_rate"] is None or math.isnan(m["format_rate"]) else f"{m['format_rate']:.4f}"
            _emit(log, f"eval {spec.name}: accuracy {m['accuracy']:.4f}, format rate {fmt}, n {m['n']}")
    finally:
        for b in backends.values():
            b.close()

    metrics.update(_averages(specs, per_bench))
    results = {
        "checkpoint_key": ckpt_key,
        "checkpoint_dir": str(checkpoint_dir),
        "backend": cfg.backend,
        "prompting": prompting.to_dict(),
        "config": cfg.model_dump(),
        "benchmarks": per_bench,
        "fingerprints": {name: b["fingerprint"] for name, b in per_bench.items()},
        "judge": judge.summary() if judge is not None else None,
        "skipped": skipped,
        "avg": {"accuracy": _finite(metrics.get("eval/avg/accuracy", math.nan)),
                "format_rate": _finite(metrics.get("eval/avg/format_rate", math.nan))},
        "metrics": metrics,
        "items": items_out,
        "samples": samples,
        "seconds": round(time.perf_counter() - t_all, 3),
    }
    if out is not None:
        write_json_atomic(out / RESULTS_FILE, {k: v for k, v in results.items() if k not in ("items", "samples")})
    return results


def _judge_client(cfg: EvalConfig, cache_dir: str | Path | None) -> JudgeClient | None:
    """The configured model judge (``cfg.judge``), its identity already asked (None: rule scoring only)."""
    if cfg.judge is None:
        return None
    judge = JudgeClient(cfg.judge, cache_dir=Path(cache_dir) / VERDICT_CACHE_DIR if cache_dir is not None else None)
    judge.identity()
    return judge


def _judged(backend: Any, spec: BenchmarkSpec, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with the backend's model judge's verdicts on the answers the rule did not accept (if it has one)."""
    return judge_rows(rows, backend.judge) if backend.judge is not None and spec.kind != "lmeval" else rows


class _Skip(Exception):
    """A benchmark that cannot run here (an lm-eval task without its data offline)."""


def _run_one(spec: BenchmarkSpec, cfg: EvalConfig, path: Path | None, sha: str, ckpt_key: str,
             checkpoint_dir: str | Path, prompting: Prompting, backend: Any, cache: PredictionCache | None,
             log: Log) -> tuple[BenchmarkResult, str, int, list[Any]]:
    """(result, cache key, rows dropped for having no image, the items evaluated: after ``limit``, empty for
    lm-eval) of one benchmark: from the cache or generated."""
    from prism_lab.data.bench_tsv import read_benchmark_tsv

    noimg: list[Any] = []
    items: list[Any] = []
    if not spec.is_task:
        assert path is not None
        items = read_benchmark_tsv(path, keep_noimg=spec.keep_noimg, skipped=noimg)
        if noimg:
            _emit(log, f"eval {spec.name}: {len(noimg)} rows without an image dropped (as VLMEvalKit does; "
                       f"set keep_noimg: true in the benchmark YAML to keep them)")
        if cfg.limit is not None:
            items = items[: cfg.limit]
    settings = resolve_settings(spec, cfg)
    key = cache_key(checkpoint_key=ckpt_key, benchmark=spec.name, file_sha256=sha, settings=settings.to_dict(),
                    backend=backend.name, prompting=prompting.to_dict())
    cached_rows = cache.get(key) if cache is not None else None
    if cached_rows is not None:
        try:
            rows = _judged(backend, spec, backend.rescore(spec, items, cached_rows))
            _emit(log, f"eval {spec.name}: {len(rows)} predictions from the cache ({key[:12]})")
            return BenchmarkResult(spec.name, rows, settings, backend.name, cached=True), key, len(noimg), items
        except (KeyError, ValueError) as e:
            _emit(log, f"eval {spec.name}: cache entry {key[:12]} does not fit the benchmark ({e}); regenerating")
    _emit(log, f"eval {spec.name}: generating {len(items) or 'lm-eval'} items ({settings.to_dict()})")
    if spec.is_task:
        from prism_lab.eval.lmeval import TaskUnavailable

        try:
            result = backend.evaluate(checkpoint_dir, spec, items, settings)
        except TaskUnavailable as e:
            raise _Skip(str(e)) from None
    else:
        result = backend.evaluate(checkpoint_dir, spec, items, settings)
    if cache is not None:
        cache.put(key, result.rows, meta={
            "checkpoint_key": ckpt_key, "benchmark": spec.name, "file": str(path) if path else None,
            "file_sha256": sha, "settings": settings.to_dict(), "prompting": prompting.to_dict(),
            "backend": backend.name, "n": len(result.rows), "created_at": time.time(),
        })
    result.rows = _judged(backend, spec, result.rows)  # after the cache: it keeps the rule's scores only
    return result, key, len(noimg), items


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m prism_lab.eval.run", description="Evaluate one checkpoint.")
    p.add_argument("checkpoint", type=Path, help="HF checkpoint directory")
    p.add_argument("-b", "--benchmark", action="append", required=True, help="benchmark name (repeatable)")
    p.add_argument("--bench-dir", type=Path, default=None, help="directory of the benchmark TSVs")
    p.add_argument("--out", type=Path, required=True, help="output directory (predictions/, results.json)")
    p.add_argument("--cache-dir", type=Path, default=None, help="prediction cache directory (default: none)")
    p.add_argument("--checkpoint-key", default=None, help="checkpoint key (default: content fingerprint)")
    p.add_argument("--backend", default="builtin")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        cfg = EvalConfig(benchmarks=args.benchmark, backend=args.backend, batch_size=args.batch_size,
                         temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                         limit=args.limit, threads=args.threads, seed=args.seed)
        res = evaluate_checkpoint(args.checkpoint, None, cfg, bench_dir=args.bench_dir, cache_dir=args.cache_dir,
                                  checkpoint_key=args.checkpoint_key, out_dir=args.out,
                                  log=logging.getLogger("prism_lab.eval"))
    except PrismError as e:
        print(f"prism-lab eval: {e}", file=sys.stderr)
        return 2
    for name, b in res["benchmarks"].items():
        print(f"{name}: accuracy {b['accuracy']}, format_rate {b['format_rate']}, n {b['n']}")
    print(f"avg: accuracy {res['avg']['accuracy']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
