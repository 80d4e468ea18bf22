"""Evaluation backends: a registry (name -> backend class) and the types every backend shares.

A backend turns one benchmark's items into scored prediction rows::

    backend = get_backend_class("builtin")(batch_size=16, prompting=Prompting(), threads=None)
    result = backend.evaluate(checkpoint_dir, spec, items, settings)   # -> BenchmarkResult

``builtin`` (``prism_lab.eval.builtin``) generates with the rollout engine and scores with the rule judge.
Further backends (``vlmevalkit``, ``lmms_eval``) register a ``module:Class`` reference with
:func:`register_backend`; classes are imported only when used, so this module stays cheap to import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError
from prism_lab.prompts import Prompting
from prism_lab.registry import Registry, import_ref

__all__ = [
    "EVAL_BACKENDS",
    "BenchmarkResult",
    "EvalBackend",
    "GenerationSettings",
    "get_backend_class",
    "register_backend",
    "resolve_settings",
    "summarize_rows",
]

# ----------------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class GenerationSettings:
    """What decides a benchmark's generations (all of it enters the prediction cache key).

    Greedy settings are canonical (temperature 0, top_p 1, top_k -1), so equivalent greedy configs share
    cache entries. ``top_k`` -1 means disabled. ``limit`` None = every item.
    """

    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int = -1
    seed: int = 0
    limit: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(spec: Any, cfg: Any) -> GenerationSettings:
    """The benchmark YAML's generation settings overridden by the EvalConfig's (None = keep the YAML's).

    An overriding temperature also decides sampling: ``> 0`` samples, ``0`` is greedy (EvalConfig doc).
    """
    temperature = spec.temperature if cfg.temperature is None else cfg.temperature
    do_sample = (spec.do_sample if cfg.temperature is None else True) and temperature > 0
    top_p = spec.top_p if cfg.top_p is None else cfg.top_p
    max_new = spec.max_new_tokens if cfg.max_new_tokens is None else cfg.max_new_tokens
    top_k = int(getattr(spec, "top_k", -1))
    top_k = -1 if top_k <= 0 else top_k
    if not do_sample:
        temperature, top_p, top_k = 0.0, 1.0, -1
    return GenerationSettings(
        max_new_tokens=int(max_new), do_sample=bool(do_sample), temperature=float(temperature),
        top_p=float(top_p), top_k=top_k, seed=int(cfg.seed), limit=cfg.limit,
    )


def summarize_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Benchmark metrics from scored rows: accuracy and format_rate are fractions in [0, 1] (format_rate NaN
    when no row is format-judged)."""
    n = len(rows)
    if n == 0:
        return {"n": 0, "accuracy": math.nan, "format_rate": math.nan, "mean_response_tokens": math.nan,
                "truncated_rate": math.nan, "by_category": {}}
    # a row's score: its graded ``score`` when the backend gives one (lm-eval metrics), else correct = 1/0
    acc = sum(float(r["score"]) if r.get("score") is not None else bool(r.get("correct")) for r in rows) / n
    judged = [r["format_valid"] for r in rows if r.get("format_valid") is not None]  # lm-eval rows have none
    fmt = sum(bool(v) for v in judged) / len(judged) if judged else math.nan
    lens = [int(r["n_tokens"]) for r in rows if r.get("n_tokens") is not None]
    trunc = sum(r.get("finish_reason") == "length" for r in rows) / n
    cats: dict[str, list[bool]] = {}
    for r in rows:
        if r.get("category"):
            cats.setdefault(str(r["category"]), []).append(bool(r.get("correct")))
    return {
        "n": n,
        "accuracy": acc,
        "format_rate": fmt,
        "mean_response_tokens": (sum(lens) / len(lens)) if lens else math.nan,
        "truncated_rate": trunc,
        "by_category": {c: {"n": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(cats.items())},
    }


@dataclass
class BenchmarkResult:
    """One benchmark's scored prediction rows (see ``prism_lab.eval.predictions``) and their metrics."""

    benchmark: str
    rows: list[dict[str, Any]]
    settings: GenerationSettings
    backend: str
    cached: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return summarize_rows(self.rows)


# ----------------------------------------------------------------------------------------------- base
class EvalBackend:
    """Base class. Subclasses set ``name`` and implement :meth:`evaluate`.

    One instance serves one checkpoint: it may load the model on the first :meth:`evaluate` and reuse
    it for every benchmark. Nothing may be loaded in ``__init__`` (a fully cached evaluation never
    touches the model).
    """

    name = "base"
    #: The model judge of this backend's answers (``prism_lab.eval.judge.JudgeClient``; None: rule scoring only).
    judge: Any = None

    def __init__(self, *, batch_size: int = 16, prompting: Prompting | None = None, threads: int | None = None,
                 log: Any = None, progress: bool = True) -> None:
        self.batch_size = batch_size
        self.prompting = prompting or Prompting()
        self.threads = threads
        self.progress = progress
        self._log = log

    def log(self, msg: str) -> None:
        if self._log is None:
            return
        if callable(getattr(self._log, "info", None)):
            self._log.info(msg)
        else:
            self._log(msg)

    def evaluate(self, checkpoint_dir: str | Path, spec: Any, items: Sequence[Any],
                 settings: GenerationSettings) -> BenchmarkResult:
        raise NotImplementedError

    def rescore(self, spec: Any, items: Sequence[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Re-score cached rows (default: keep them as stored)."""
        return rows

    def close(self) -> None:
        """Release the model (called once the checkpoint's benchmarks are done)."""

    def inference_engine(self) -> str | None:
        """The engine that generates this backend's predictions (``hf`` / ``vllm``), without loading a model; None
        when prism-lab cannot say (the evaluation fingerprint records it)."""
        return None

    def judge_identity(self) -> tuple[str | None, str | None]:
        """(the model judge scoring this backend's answers, its version); (None, None): rule scoring only."""
        return self.judge.identity() if self.judge is not None else (None, None)


# ----------------------------------------------------------------------------------------------- registry
EVAL_BACKENDS: Registry[type[EvalBackend] | str] = Registry("eval backend")


def register_backend(name: str, backend: type[EvalBackend] | str, *, replace: bool = False) -> None:
    """Register a backend class, or a lazy ``"package.module:Class"`` reference."""
    EVAL_BACKENDS.add(name, backend, replace=replace)


def get_backend_class(name: str) -> type[EvalBackend]:
    """The backend class called ``name`` (unknown names raise ConfigError listing the known ones)."""
    try:
        ref = EVAL_BACKENDS.get(name)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    if isinstance(ref, str):

        try:
            ref = import_ref(ref)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"eval backend {name!r} is not available in this installation ({e})") from None
    return ref


register_backend("builtin", "prism_lab.eval.builtin:BuiltinBackend")
register_backend("vlmevalkit", "prism_lab.eval.vlmeval.backend:VLMEvalKitBackend")
register_backend("lmeval", "prism_lab.eval.lmeval:LmEvalBackend")  # `kind: lmeval` benchmarks only
register_backend("lmms_eval", "prism_lab.eval.lmms.backend:LmmsEvalBackend")  # `kind: lmms` ones go here always
