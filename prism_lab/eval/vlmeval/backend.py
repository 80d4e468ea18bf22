"""The ``vlmevalkit`` evaluation backend: VLMEvalKit's own inference bookkeeping and scoring.

For one benchmark the backend:

1. lays the TSV out where VLMEvalKit reads it (``$LMUData/<name>.tsv``): an official, complete file is
   used in place (its directory becomes ``$LMUData``; md5 checked first); a synthetic benchmark, a local
   variant or a ``limit``-ed subset is linked / written into a private ``LMUData`` under the work dir;
2. builds the dataset: the official VLMEvalKit class for ``vlmeval_name`` (instantiated on the local
   name for local variants), or our ``Prism*Dataset`` classes for synthetic benchmarks
   (``prism_lab.eval.vlmeval.datasets``);
3. runs ``vlmeval.inference.infer_data_job`` with :class:`~prism_lab.eval.vlmeval.model.PrismVLM`
   (batched generation through ``prism_lab.rollout``, the paper's system prompt, the ``<answer>``
   content as VLMEvalKit's prediction); prediction files are TSV (``PRED_FORMAT=tsv``: xlsx cells stop at
   32767 characters);
4. scores: ``dataset.evaluate(pred_file, model="exact_matching")`` for MCQ / Yes/No benchmarks and for
   our synthetic datasets; for MathVista / MathVision / MathVerse, whose VLMEvalKit ``evaluate`` requires
   a GPT judge, the PRISM rule (``prism_lab.eval.vlmeval.judge``); then, when ``PRISM_JUDGE_URL`` names
   an OpenAI-compatible server, rows the rule marked wrong go to that judge (the paper's fallback);
5. returns prediction rows in the built-in backend's schema (``prediction`` = the raw response,
   ``extracted`` = the judged answer, ``correct`` = VLMEvalKit's / the rule's verdict), with
   VLMEvalKit's metrics table under ``info["vlmeval_metrics"]``.

Process model. ``import vlmeval`` disables autograd for the whole process, changes the default SSL
context, configures logging and takes ~12 s; and the main environment does not have VLMEvalKit. So by
default the backend runs VLMEvalKit in a **worker subprocess** (one per backend instance, i.e. per
checkpoint: the model is loaded once and serves every benchmark), with the Python interpreter chosen as:
``$PRISM_VLMEVAL_PYTHON``; else this interpreter when it can import vlmeval; else
``<repo>/.venv-vlmeval/bin/python``. ``PRISM_VLMEVAL_MODE=inprocess`` (or ``in_process=True``) runs it in
the calling process instead, through :func:`prism_lab.eval.vlmeval.tv_shim.import_vlmeval`, which restores the
grad mode and the SSL context after the import. Either way the caller's ``torch.is_grad_enabled()`` is
unchanged.

Work files go to ``$PRISM_VLMEVAL_WORK_DIR`` (kept) or a temporary directory (removed by :meth:`close`).

The worker protocol is JSON lines: requests on the worker's stdin, replies on a private copy of its
stdout (the worker sends its own stdout, i.e. VLMEvalKit's prints, to its log file). Steps 1-5 run in
:mod:`prism_lab.eval.vlmeval.worker` (with :mod:`~prism_lab.eval.vlmeval.layout` for step 1 and
:mod:`~prism_lab.eval.vlmeval.verdicts` for step 4); this module is the caller's side.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prism_lab.errors import CheckpointError, ConfigError, DataError, PrismError
from prism_lab.eval.backends import BenchmarkResult, EvalBackend, GenerationSettings
from prism_lab.eval.vlmeval.worker import MODEL_CACHE, run_request

__all__ = ["VLMEvalKitBackend", "find_vlmeval_python"]

REPO = Path(__file__).resolve().parents[3]  # the checkout (prism_lab/eval/vlmeval/backend.py)
_ERRORS = {"DataError": DataError, "ConfigError": ConfigError, "CheckpointError": CheckpointError}


def _has_vlmeval() -> bool:
    try:
        return importlib.util.find_spec("vlmeval") is not None
    except (ImportError, ValueError):
        return False


def find_vlmeval_python() -> str:
    """The interpreter that runs VLMEvalKit (see the module doc); ConfigError when there is none."""
    env = os.environ.get("PRISM_VLMEVAL_PYTHON")
    if env:
        if not Path(env).exists():
            raise ConfigError(f"PRISM_VLMEVAL_PYTHON={env} does not exist")
        return env
    if _has_vlmeval():
        return sys.executable
    cand = REPO / ".venv-vlmeval" / "bin" / "python"
    if cand.exists():
        return str(cand)
    raise ConfigError(
        "eval backend 'vlmevalkit' needs VLMEvalKit, which this environment does not have: install the "
        "'vlmeval' extra (pip install -c constraints/vlmeval.txt -e '.[vlmeval]'), or point "
        f"PRISM_VLMEVAL_PYTHON at an interpreter that has it (default looked for: {cand}); see docs/vlmevalkit.md"
    )




class VLMEvalKitBackend(EvalBackend):
    """Evaluation through VLMEvalKit (see the module doc). Registered as ``vlmevalkit``."""

    name = "vlmevalkit"
    #: the worker module the subprocess runs (``python -m <module> --worker``) and its work-dir prefix
    worker_module = "prism_lab.eval.vlmeval.worker"
    work_prefix = "prism-vlmeval-"

    def __init__(self, *, engine_kind: str = "auto", in_process: bool | None = None, python: str | None = None,
                 work_dir: str | Path | None = None, worker_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine_kind = engine_kind
        mode = os.environ.get("PRISM_VLMEVAL_MODE", "subprocess")
        self.in_process = (mode == "inprocess") if in_process is None else bool(in_process)
        self.python = python
        env_dir = os.environ.get("PRISM_VLMEVAL_WORK_DIR")
        self._keep = work_dir is not None or bool(env_dir)
        self._work_root = Path(work_dir or env_dir) if (work_dir or env_dir) else None
        self.worker_timeout = worker_timeout
        self._proc: subprocess.Popen | None = None
        self._log_file: Path | None = None
        self._n = 0
        self.replay: dict[str, dict[str, str]] = {}  # benchmark -> {index: response} (tests, re-scoring)

    # -- plumbing
    def work_root(self) -> Path:
        if self._work_root is None:
            self._work_root = Path(tempfile.mkdtemp(prefix=self.work_prefix))
        self._work_root.mkdir(parents=True, exist_ok=True)
        return self._work_root

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        python = self.python or self.find_python()
        self._log_file = self.work_root() / "worker.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
        log = open(self._log_file, "ab")  # noqa: SIM115 - owned by the worker's lifetime
        self.log(f"{self.name}: starting worker {python} (log {self._log_file})")
        self._proc = subprocess.Popen([python, "-m", self.worker_module, "--worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                      text=True, bufsize=1, cwd=str(REPO))
        log.close()
        ready = self._read_reply()
        if not ready.get("ready"):
            self.close()
            raise ConfigError(f"{self.name} worker ({python}) could not import its evaluation kit: "
                              f"{ready.get('type')}: {ready.get('message')}")
        return self._proc

    def _log_tail(self, n: int = 40) -> str:
        if self._log_file is None or not self._log_file.is_file():
            return ""
        lines = self._log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def _read_reply(self) -> dict:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise PrismError(f"{self.name} worker exited (code {code}); last log lines:\n{self._log_tail()}")
        return json.loads(line)

    def _call(self, req: dict) -> dict:
        if self.in_process:
            return self.run_local(req)
        proc = self._start()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(req) + "\n")
        proc.stdin.flush()
        reply = self._read_reply()
        if not reply.get("ok"):
            cls = _ERRORS.get(str(reply.get("type")), PrismError)
            msg = str(reply.get("message"))
            if cls is PrismError:
                msg = f"{self.name} worker failed: {reply.get('type')}: {msg} (log: {self._log_file})"
            raise cls(msg)
        return reply

    def find_python(self) -> str:
        """The interpreter that runs the worker (ConfigError in one line when there is none)."""
        return find_vlmeval_python()

    def run_local(self, req: dict) -> dict:
        """One request in this process (``in_process``)."""
        return run_request(req)

    # -- EvalBackend
    def request(self, checkpoint_dir: str | Path, spec: Any, items: Sequence[Any],
                settings: GenerationSettings) -> dict[str, Any]:
        """The worker request for one benchmark (public for tests and debugging)."""
        items = list(items)
        if not items:
            raise DataError(f"benchmark {spec.name!r}: no items to evaluate")
        tsv = Path(items[0].source) if getattr(items[0], "source", "") else spec.tsv_path()
        from prism_lab.eval.vlmeval.datasets import check_benchmark_file

        check_benchmark_file(spec, tsv, check_md5=False)  # the worker checks the md5 where it matters
        all_idx = self._all_indices(tsv)
        want = [str(it.index) for it in items]
        self._n += 1
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in spec.name)
        return {
            "op": "evaluate", "checkpoint_dir": str(Path(checkpoint_dir).resolve()),
            "spec": spec.model_dump(), "tsv": str(tsv.resolve()),
            "indices": None if want == all_idx else want, "settings": settings.to_dict(),
            "prompting": self.prompting.to_dict(), "batch_size": int(self.batch_size), "threads": self.threads,
            "engine_kind": self.engine_kind, "work_dir": str(self.work_root() / f"{self._n:03d}-{safe}"),
            "replay": self.replay.get(spec.name),
        }

    @staticmethod
    def _all_indices(tsv: Path) -> list[str]:
        import csv

        import pandas as pd

        df = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False, usecols=["index"],
                         quoting=csv.QUOTE_MINIMAL)
        return [s.strip() for s in df["index"]]

    def evaluate(self, checkpoint_dir: str | Path, spec: Any, items: Sequence[Any],
                 settings: GenerationSettings) -> BenchmarkResult:
        req = self.request(checkpoint_dir, spec, items, settings)
        self.log(f"eval {spec.name}: {self.name} run in {req['work_dir']}")
        reply = self._call(req)
        rows = reply["rows"]
        by_idx = {str(r["index"]): r for r in rows}
        ordered = [by_idx[str(it.index)] for it in items if str(it.index) in by_idx]
        if len(ordered) != len(list(items)):
            raise PrismError(f"eval {spec.name}: {self.name} returned {len(rows)} rows for {len(list(items))} items")
        for r, it in zip(ordered, items):
            r["index"] = it.index
        return BenchmarkResult(benchmark=spec.name, rows=ordered, settings=settings, backend=self.name,
                               info=reply.get("info", {}))

    def rescore(self, spec: Any, items: Sequence[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Cached rows are kept as VLMEvalKit scored them; a cache entry that does not cover the items
        raises KeyError (the caller then regenerates)."""
        have = {str(r.get("index")) for r in rows}
        for it in items:
            if str(it.index) not in have:
                raise KeyError(f"no stored prediction for index {it.index!r}")
        by_idx = {str(r.get("index")): r for r in rows}
        return [by_idx[str(it.index)] for it in items]

    def inference_engine(self) -> str:
        from prism_lab.rollout import resolve_engine_kind

        return resolve_engine_kind(self.engine_kind)

    def judge_identity(self) -> tuple[str | None, str | None]:
        """The OpenAI-compatible judge of ``PRISM_JUDGE_*`` (its model name, else its URL), when one is set."""
        from prism_lab.eval.vlmeval.judge import JudgeConfig

        cfg = JudgeConfig.from_env()
        return (cfg.model or cfg.url, None) if cfg.url else (None, None)

    def close_local(self) -> None:
        """Release the model an in-process run loaded."""
        for m in MODEL_CACHE.values():
            m.close()
        MODEL_CACHE.clear()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.poll() is None and proc.stdin is not None:
                    proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                    proc.stdin.flush()
                    proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self.in_process:
            self.close_local()
        if self._work_root is not None and not self._keep:
            shutil.rmtree(self._work_root, ignore_errors=True)
            self._work_root = None
