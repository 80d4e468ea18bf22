"""The ``lmms_eval`` evaluation backend (lmms-eval 0.7.3, the paper's evaluation kit): the caller's side.

lmms-eval lives in the external evaluation backends' virtualenv, next to VLMEvalKit (the README's set-up line
installs the ``vlmeval`` and ``lmms`` extras there, locked by ``constraints/vlmeval.txt``). Like the VLMEvalKit
backend, whose process plumbing this class reuses, it runs lmms-eval in a **worker subprocess** (one per backend
instance, i.e. per checkpoint: the model is loaded once), with the interpreter chosen as:
``$PRISM_LMMS_EVAL_PYTHON``; else this interpreter when it can import ``lmms_eval``; else
``<repo>/.venv-vlmeval/bin/python`` when that one can. ``PRISM_VLMEVAL_MODE=inprocess`` (or ``in_process=True``)
runs it in the calling process. The worker (:mod:`prism_lab.eval.lmms.worker`) evaluates:

- a TSV benchmark (the synthetic ones, or a local file in VLMEvalKit's layout) as an lmms-eval task built from
  local files (:mod:`prism_lab.eval.lmms.tasks`), scored by lmms-eval's ``process_results`` with the PRISM rule
  judge: the rows are the built-in backend's (same prompts, same generation order and seeds);
- a ``kind: lmms`` benchmark as lmms-eval's own task ``lmms_task`` (:mod:`prism_lab.eval.lmms.paper`), with
  its dataset from the local Hugging Face cache; when the dataset is not there the benchmark is skipped with
  one line (:class:`~prism_lab.eval.lmeval.TaskUnavailable`), before any worker starts.

The prediction cache is the evaluation's (``prism_lab.eval.predictions``): the backend name is part of its key.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError, DataError
from prism_lab.eval.backends import BenchmarkResult, GenerationSettings
from prism_lab.eval.vlmeval.backend import REPO, VLMEvalKitBackend

__all__ = ["LmmsEvalBackend", "find_lmms_python", "hf_dataset_dir", "require_local_dataset"]

ENV = "PRISM_LMMS_EVAL_PYTHON"


def _can_import(python: str) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('lmms_eval') is None)"
    return subprocess.run([python, "-c", code], capture_output=True, timeout=60, check=False).returncode == 0


def find_lmms_python() -> str:
    """The interpreter that runs lmms-eval (see the module doc); ConfigError, one line, when there is none."""
    env = os.environ.get(ENV)
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"{ENV}={env} does not exist (expected the python of the virtualenv that has lmms-eval)")
        return env
    if importlib.util.find_spec("lmms_eval") is not None:
        return sys.executable
    cand = REPO / ".venv-vlmeval" / "bin" / "python"
    if cand.is_file() and _can_import(str(cand)):
        return str(cand)
    raise ConfigError(
        "eval backend 'lmms_eval' needs lmms-eval, which this environment does not have: set up the external "
        "backends' virtualenv as the README says (pip install -c constraints/vlmeval.txt -e '.[vlmeval,lmms,test]') "
        f"and point {ENV} at its python (default looked for: {cand})")


def hf_dataset_dir(repo_id: str) -> Path:
    """Where the Hugging Face hub cache keeps dataset ``repo_id`` (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    hub = os.environ.get("HF_HUB_CACHE") or str(Path(os.environ.get("HF_HOME") or "~/.cache/huggingface") / "hub")
    return Path(hub).expanduser() / ("datasets--" + repo_id.replace("/", "--"))


def require_local_dataset(spec: Any) -> None:
    """TaskUnavailable (the benchmark is skipped with one line) when a ``kind: lmms`` task's dataset is not local."""
    from prism_lab.eval.lmeval import TaskUnavailable

    where = hf_dataset_dir(spec.lmms_dataset)
    if not (where / "snapshots").is_dir():
        raise TaskUnavailable(f"lmms-eval task {spec.lmms_task}: its dataset {spec.lmms_dataset} is not in the local "
                              f"Hugging Face cache ({where}); download it there first (evaluation runs offline)")


class LmmsEvalBackend(VLMEvalKitBackend):
    """Evaluation through lmms-eval (see the module doc). Registered as ``lmms_eval``."""

    name = "lmms_eval"
    worker_module = "prism_lab.eval.lmms.worker"
    work_prefix = "prism-lmms-"

    def find_python(self) -> str:
        return find_lmms_python()

    def run_local(self, req: dict) -> dict:
        from prism_lab.eval.lmms.worker import run_request

        return run_request(req)

    def close_local(self) -> None:
        from prism_lab.eval.lmms.worker import MODEL_CACHE

        for m in MODEL_CACHE.values():
            m.close()
        MODEL_CACHE.clear()

    def request(self, checkpoint_dir: str | Path, spec: Any, items: Sequence[Any],
                settings: GenerationSettings) -> dict[str, Any]:
        if spec.kind != "lmms":
            return super().request(checkpoint_dir, spec, items, settings)
        require_local_dataset(spec)
        self._n += 1
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.name)
        return {"op": "evaluate", "checkpoint_dir": str(Path(checkpoint_dir).resolve()), "spec": spec.model_dump(),
                "settings": settings.to_dict(), "prompting": self.prompting.to_dict(),
                "batch_size": int(self.batch_size), "threads": self.threads, "engine_kind": self.engine_kind,
                "work_dir": str(self.work_root() / f"{self._n:03d}-{safe}"), "replay": self.replay.get(spec.name)}

    def evaluate(self, checkpoint_dir: str | Path, spec: Any, items: Sequence[Any],
                 settings: GenerationSettings) -> BenchmarkResult:
        if spec.kind != "lmms":
            return super().evaluate(checkpoint_dir, spec, items, settings)
        req = self.request(checkpoint_dir, spec, items, settings)
        reply = self._call(req)
        if not reply["rows"]:
            raise DataError(f"lmms-eval task {spec.lmms_task}: no documents evaluated")
        return BenchmarkResult(benchmark=spec.name, rows=reply["rows"], settings=settings, backend=self.name,
                               info=reply.get("info", {}))

    def rescore(self, spec: Any, items: Sequence[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return rows if spec.kind == "lmms" else super().rescore(spec, items, rows)

    def judge_identity(self) -> tuple[str | None, str | None]:
        return None, None  # rule scoring (TSV tasks) or the task's own metric
