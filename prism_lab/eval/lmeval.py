"""The lm-eval wing: text-only capability retention through lm-eval's Python API (lm_eval 0.4.13).

A benchmark of ``kind: lmeval`` names an lm-eval task in ``lmeval_task``: either a task YAML shipped
under ``benchmarks/`` (a path relative to the benchmark's YAML; ``dataset_kwargs.data_files`` entries
that are plain file names are resolved against the benchmark directory, so a generated JSONL is found
where the data run wrote it), or the name of one of lm-eval's own tasks (``gsm8k``, ``arc_easy``,
``mmlu``...). lm-eval's own tasks need their dataset locally or in the Hugging Face cache: prism-lab
always runs lm-eval with ``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``, and a task whose dataset
cannot be loaded is skipped with one log line instead of failing the evaluation.

The model is the checkpoint itself as a plain causal LM: lm-eval's ``HFLM`` (model type ``hf``) gets
the already loaded ``Qwen3VLForConditionalGeneration`` and its tokenizer. ``hf-multimodal`` cannot be
used: it has no ``loglikelihood`` (lm_eval/models/hf_vlms.py), which every multiple-choice task
needs; and ``hf`` with a directory would load ``AutoModelForCausalLM``, which has no Qwen3-VL entry in
transformers 5.24. Text-only forwards of the Qwen3-VL model (``input_ids`` only) are exact.

Per-item scores come from lm-eval's logged samples (``log_samples=True``): one prediction row per
document with the task's main metric as ``score`` (and ``correct`` = score 1), so the paired item
bootstrap of the report works for these benchmarks too.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from prism_lab.errors import ConfigError, DataError
from prism_lab.eval.backends import BenchmarkResult, EvalBackend, GenerationSettings
from prism_lab.eval.predictions import file_sha256

__all__ = ["LMEVAL_VERSION", "LmEvalBackend", "TaskUnavailable", "lmeval_available", "require_task_data",
           "resolve_task_spec", "task_fingerprint"]

#: The lm-eval release this wing was written against (``pip install -e ".[lmeval]"`` pins it).
LMEVAL_VERSION = "0.4.13"

log = logging.getLogger(__name__)


class TaskUnavailable(Exception):
    """The task's data cannot be loaded offline (not local, not in the HF cache): skip the benchmark."""


def lmeval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


@contextlib.contextmanager
def offline_env() -> Iterator[None]:
    """No network for the duration: HF_DATASETS_OFFLINE / HF_HUB_OFFLINE in the environment and in the
    constants ``datasets`` and ``huggingface_hub`` read once at import (restored afterwards)."""
    import datasets.config
    import huggingface_hub.constants

    keys = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    old_env = {k: os.environ.get(k) for k in keys}
    old_consts = (datasets.config.HF_DATASETS_OFFLINE, datasets.config.HF_HUB_OFFLINE,
                  huggingface_hub.constants.HF_HUB_OFFLINE)
    os.environ.update({k: "1" for k in keys})
    datasets.config.HF_DATASETS_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        (datasets.config.HF_DATASETS_OFFLINE, datasets.config.HF_HUB_OFFLINE,
         huggingface_hub.constants.HF_HUB_OFFLINE) = old_consts
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _yaml_path(spec: Any) -> Path | None:
    """The task YAML of ``spec`` (a path relative to its benchmark YAML), or None for an lm-eval task name."""
    ref = str(spec.lmeval_task)
    if not ref.endswith((".yaml", ".yml")):
        return None
    base = Path(spec.spec_dir)
    path = Path(ref) if Path(ref).is_absolute() else base / ref
    if not path.is_file():
        raise ConfigError(f"benchmark {spec.name!r}: field 'lmeval_task': task YAML {path} not found")
    return path


def resolve_task_spec(spec: Any, bench_dir: str | Path | None) -> str | dict[str, Any]:
    """What to hand lm-eval's ``TaskManager.load``: a task name, or the task YAML as a dict with its data
    files resolved (plain names -> ``<bench_dir>/<name>``; a missing file raises TaskUnavailable)."""
    path = _yaml_path(spec)
    if path is None:
        return str(spec.lmeval_task)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not cfg.get("task"):
        raise ConfigError(f"{path}: expected an lm-eval task mapping with a 'task' field")
    cfg = copy.deepcopy(cfg)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        for split, ref in list(files.items()):
            p = Path(str(ref))
            if not p.is_absolute():
                if bench_dir is None:
                    raise TaskUnavailable(f"{path}: data file {ref} needs the benchmark directory (bench_dir)")
                p = Path(bench_dir) / p
            if not p.is_file():
                raise TaskUnavailable(f"data file {p} not found (regenerate the data run)")
            files[split] = str(p)
    return cfg


def task_fingerprint(spec: Any, data_file: Path | None) -> str:
    """What decides an lm-eval benchmark's results besides the model, for the prediction cache key: the
    lm-eval version, the task reference, the task YAML's text and the data file's sha256."""
    h = hashlib.sha256(f"lm_eval {LMEVAL_VERSION}\0{spec.lmeval_task}\0{spec.lmeval_metric}\0"
                       f"{spec.num_fewshot}\0{spec.chat_template}\0".encode())
    path = _yaml_path(spec)
    if path is not None:
        h.update(path.read_bytes())
    if data_file is not None and data_file.is_file():
        h.update(file_sha256(data_file).encode())
    return "lmeval-" + h.hexdigest()


@functools.lru_cache(maxsize=2)
def _task_manager(include_defaults: bool) -> Any:
    """lm-eval's task index (its ~15,000 built-in tasks take ~14 s to index on 2 cores: built once)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


def _load_task(spec: Any, bench_dir: str | Path | None) -> tuple[dict[str, Any], Any]:
    """(the lm-eval Task objects by name, the task index that loaded them), or TaskUnavailable when the
    dataset cannot be loaded offline. The index is handed on to ``simple_evaluate``, which otherwise builds
    a full one of its own for every call (about 6 s each on 2 cores, even for a task given as a YAML)."""
    task_spec = resolve_task_spec(spec, bench_dir)
    manager = _task_manager(isinstance(task_spec, str))
    try:
        with offline_env():
            loaded = manager.load([task_spec])
    except KeyError as e:
        raise ConfigError(f"benchmark {spec.name!r}: lm-eval has no task {spec.lmeval_task!r} ({e})") from None
    except (ConnectionError, FileNotFoundError, OSError) as e:  # datasets' offline errors are ConnectionError
        raise TaskUnavailable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    tasks = loaded["tasks"]
    if not tasks:
        raise ConfigError(f"benchmark {spec.name!r}: lm-eval task {spec.lmeval_task!r} has no subtasks")
    return tasks, manager


def require_task_data(spec: Any, bench_dir: str | Path | None) -> None:
    """DataError (one line, with what to do) when the task's data cannot be loaded offline: a generated data
    file not in ``bench_dir``, or a hub dataset not in the local Hugging Face cache. The eval stage of a sweep
    skips such a task; `prism-lab eval`, asked for it by name, refuses before anything is written."""
    try:
        _load_task(spec, bench_dir)
    except TaskUnavailable as e:
        if getattr(spec, "source", None) != "hf":
            raise DataError(f"benchmark {spec.name!r}: {e}; point --bench-dir at the data run's bench/ directory "
                            f"(prism-lab data synth writes it)") from None
        raise DataError(
            f"benchmark {spec.name!r}: the dataset of lm-eval task {spec.lmeval_task!r} is not local ({e}); "
            f"prism-lab runs lm-eval offline (HF_DATASETS_OFFLINE=1), so download it once where there is network "
            f"(it lands in the Hugging Face datasets cache) and copy that cache here, or point HF_DATASETS_CACHE "
            f"(or HF_HOME) at a cache that holds it") from None


def _main_metric(task_result: dict[str, Any], wanted: str | None) -> tuple[str, str]:
    """(metric, filter) of the score: ``wanted`` (``acc`` or ``exact_match,strict-match``) or the first
    metric the task reported (filter ``none`` first)."""
    keys = [k for k in task_result if "," in k and not k.split(",")[0].endswith("_stderr")]
    if wanted:
        name, _, filt = wanted.partition(",")
        for k in keys:
            m, f = k.split(",", 1)
            if m == name and (not filt or f == filt):
                return m, f
        raise ConfigError(f"lm-eval metric {wanted!r} not reported; reported: {', '.join(keys)}")
    keys.sort(key=lambda k: k.split(",", 1)[1] != "none")
    if not keys:
        raise ConfigError("lm-eval reported no metric")
    m, f = keys[0].split(",", 1)
    return m, f


def _prediction(resps: Any) -> str:
    """The model's answer: the generated text, or for a multiple-choice task the index of the choice with
    the highest log-likelihood (lm-eval's ``acc``)."""
    if isinstance(resps, list) and resps and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in resps):
        lls = [float(r[0]) for r in resps]
        return f"choice {lls.index(max(lls))}"
    if isinstance(resps, list) and len(resps) == 1:
        return str(resps[0])
    return str(resps)


def _rows(samples: Sequence[dict[str, Any]], metric: str, filt: str) -> list[dict[str, Any]]:
    rows = []
    for s in sorted(samples, key=lambda s: int(s["doc_id"])):
        if s.get("filter", filt) != filt:
            continue
        score = float(s[metric])
        doc = s.get("doc") or {}
        args = s.get("arguments") or []
        ctx = args[0][0] if args and isinstance(args[0], (list, tuple)) and args[0] else ""
        rows.append({
            "index": doc.get("id", doc.get("index", s["doc_id"])) if isinstance(doc, dict) else s["doc_id"],
            "question": str(ctx), "prompt": str(ctx), "answer": str(s.get("target")),
            "prediction": _prediction(s.get("filtered_resps")), "score": score, "correct": score >= 1.0,
            "format_valid": None, "n_tokens": None, "finish_reason": None, "category": None,
        })
    return rows


class LmEvalBackend(EvalBackend):
    """Runs ``kind: lmeval`` benchmarks through ``lm_eval.simple_evaluate`` on the loaded checkpoint."""

    name = "lmeval"

    def __init__(self, *, bench_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bench_dir = bench_dir
        self._lm = None
        self._dir: Path | None = None

    def model(self, checkpoint_dir: str | Path):
        d = Path(checkpoint_dir)
        if self._lm is not None and self._dir == d:
            return self._lm
        import torch
        from lm_eval.models.huggingface import HFLM

        from prism_lab.models import load_policy

        if self.threads:
            torch.set_num_threads(self.threads)
        model, processor = load_policy(d)
        text_cfg = getattr(model.config, "text_config", model.config)
        self._lm = HFLM(pretrained=model, tokenizer=processor.tokenizer, backend="causal",
                        batch_size=max(1, int(self.batch_size)),
                        max_length=int(getattr(text_cfg, "max_position_embeddings", 2048)))
        self._dir = d
        return self._lm

    def close(self) -> None:
        self._lm = None
        self._dir = None

    def inference_engine(self) -> str:
        return "hf"  # lm-eval's HFLM around the loaded checkpoint

    def evaluate(self, checkpoint_dir: str | Path, spec: Any, items: Sequence[Any],
                 settings: GenerationSettings) -> BenchmarkResult:
        if not lmeval_available():
            raise ConfigError(f"benchmark {spec.name!r} needs lm-eval: pip install -e '.[lmeval]'")
        tasks, manager = _load_task(spec, self.bench_dir)
        from lm_eval import simple_evaluate

        from prism_lab.prompts import SYSTEM_PROMPT

        lm = self.model(checkpoint_dir)
        chat = bool(getattr(spec, "chat_template", False))
        with offline_env():
            res = simple_evaluate(
                model=lm, tasks=list(tasks.values()), task_manager=manager, num_fewshot=spec.num_fewshot,
                limit=settings.limit,
                log_samples=True, bootstrap_iters=0, apply_chat_template=chat,
                system_instruction=SYSTEM_PROMPT if chat and self.prompting.system_prompt else None,
                random_seed=settings.seed, numpy_random_seed=settings.seed, torch_random_seed=settings.seed,
                fewshot_random_seed=settings.seed,
            )
        rows: list[dict[str, Any]] = []
        info: dict[str, Any] = {"lm_eval_tasks": sorted(tasks)}
        for name in sorted(tasks):
            metric, filt = _main_metric(res["results"][name], spec.lmeval_metric)
            task_rows = _rows(res["samples"][name], metric, filt)
            if len(tasks) > 1:
                for r in task_rows:
                    r["index"], r["category"] = f"{name}/{r['index']}", name
            rows += task_rows
            info[name] = {"metric": metric, "filter": filt, "value": res["results"][name][f"{metric},{filt}"]}
        return BenchmarkResult(benchmark=spec.name, rows=rows, settings=settings, backend=self.name, info=info)
