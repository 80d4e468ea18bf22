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
stdout (the worker sends its own stdout, i.e. VLMEvalKit's prints, to its log file).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prism_lab.errors import CheckpointError, ConfigError, DataError, PrismError
from prism_lab.eval.backends import BenchmarkResult, EvalBackend, GenerationSettings
from prism_lab.prompts import Prompting

__all__ = ["VLMEvalKitBackend", "find_vlmeval_python", "run_request", "worker_main"]

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "PrismVLM"
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


# ----------------------------------------------------------------------------------------------- worker side
def _subset_tsv(src: Path, dst: Path, keep: set[str]) -> int:
    """Copy the rows of ``src`` whose index is in ``keep`` to ``dst``; short image references (the index
    of another row) are resolved first, so kept rows never point at dropped ones."""
    import csv

    import pandas as pd

    df = pd.read_csv(src, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    if "image" in df.columns:
        by_idx = dict(zip(df["index"].astype(str), df["image"]))
        df["image"] = [by_idx.get(v, v) if 0 < len(v) <= 64 else v for v in df["image"]]
    sub = df[df["index"].astype(str).isin(keep)]
    sub.to_csv(dst, sep="\t", index=False, lineterminator="\n")
    return len(sub)


def _layout(req: Mapping[str, Any], spec: Any, work: Path) -> tuple[str, Path]:
    """(dataset name, LMUData root) for a request (see step 1 of the module doc)."""
    from prism_lab.eval.vlmeval.datasets import check_benchmark_file

    tsv = check_benchmark_file(spec, req["tsv"], check_md5=not req.get("indices"))
    indices = req.get("indices")
    official = spec.source == "vlmevalkit" and spec.vlmeval_name and tsv.stem == spec.vlmeval_name
    if official and not indices:
        return tsv.stem, tsv.parent
    root = work / "LMUData"
    root.mkdir(parents=True, exist_ok=True)
    if spec.source == "synth":
        name = spec.name
    else:
        name = tsv.stem if not official else f"{tsv.stem}_prismsub"
    dst = root / f"{name}.tsv"
    if indices:
        _subset_tsv(tsv, dst, {str(i) for i in indices})
    else:
        try:
            dst.symlink_to(tsv.resolve())
        except OSError:
            shutil.copyfile(tsv, dst)
    return name, root


def _build_dataset(spec: Any, name: str, prompting: Prompting):
    from prism_lab.eval.vlmeval.datasets import dataset_classes, official_class, register_datasets

    if spec.source == "synth" or not spec.vlmeval_name:
        register_datasets({name: spec.kind})
        cls = dataset_classes()[spec.kind]
        ds = cls(dataset=name)
        ds.yesno_instruction = prompting.yesno_instruction
        return ds, "prism"
    cls = official_class(spec.vlmeval_name)
    ds = cls(dataset=name)
    from prism_lab.eval.vlmeval.datasets import JUDGE_CLASSES

    return ds, ("rule" if cls.__name__ in JUDGE_CLASSES else "vlmeval")


def _table(obj: Any) -> Any:
    """VLMEvalKit's metrics (DataFrame / dict) as JSON-able records."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return json.loads(obj.to_json(orient="records"))
    if isinstance(obj, dict):
        return json.loads(json.dumps(obj, default=str))
    return None if obj is None else str(obj)


def _hits_from_files(work: Path, pred_file: Path) -> dict[str, bool]:
    """Per-row verdicts from VLMEvalKit's intermediate files (``hit`` or ``score`` by ``index``)."""
    from vlmeval.smp import load

    stem = pred_file.stem
    best: dict[str, bool] = {}
    for p in sorted(work.iterdir()):
        if not p.name.startswith(stem + "_") or p.suffix not in (".tsv", ".xlsx", ".csv", ".pkl", ".json"):
            continue
        try:
            data = load(str(p))
        except Exception:  # noqa: BLE001
            continue
        if not hasattr(data, "columns") or "index" not in data.columns:
            continue
        col = "hit" if "hit" in data.columns else ("score" if "score" in data.columns else None)
        if col is None:
            continue
        best = {str(i): bool(int(float(v))) if not isinstance(v, bool) else v
                for i, v in zip(data["index"], data[col])}
        if col == "hit":
            break
    return best


def _mcq_hits(dataset: Any, records: Mapping[str, dict]) -> dict[str, bool]:
    """VLMEvalKit's exact-matching MCQ verdict (``can_infer``) for classes that write no per-row file."""
    from vlmeval.dataset.utils.multiple_choice import can_infer

    from prism_lab.eval.vlmeval.judge import row_options

    out = {}
    for row in dataset.data.to_dict(orient="records"):
        i = str(row["index"])
        opts = row_options(row)
        got = can_infer(records[i]["answer"], opts) if opts else None
        out[i] = bool(got) and str(got) == str(row.get("answer")).strip()
    return out


_MODEL: dict[str, Any] = {}


def _model_for(req: Mapping[str, Any], settings: GenerationSettings, prompting: Prompting, replay):
    from prism_lab.eval.vlmeval.model import PrismVLM

    key = json.dumps([req["checkpoint_dir"], req.get("engine_kind", "auto"), req.get("batch_size", 16),
                      req.get("threads")])
    model = _MODEL.get(key)
    if model is None:
        for old in _MODEL.values():
            old.close()
        _MODEL.clear()
        model = PrismVLM(req["checkpoint_dir"], settings=settings, prompting=prompting,
                         batch_size=int(req.get("batch_size", 16)), engine_kind=req.get("engine_kind", "auto"),
                         threads=req.get("threads"))
        _MODEL[key] = model
    model.configure(settings=settings, prompting=prompting, replay=replay)
    return model


def run_request(req: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate one benchmark through VLMEvalKit (runs in the worker, or in-process); returns
    ``{"rows", "info"}``."""
    from prism_lab.eval.vlmeval.tv_shim import import_vlmeval

    os.environ["PRED_FORMAT"] = "tsv"
    import_vlmeval()
    import torch
    from vlmeval.inference import infer_data_job
    from vlmeval.smp import get_pred_file_path

    from prism_lab.eval.benchmarks import BenchmarkSpec
    from prism_lab.eval.vlmeval.judge import judge_from_env, math_row_correct
    from prism_lab.prompts import is_format_valid

    grad = torch.is_grad_enabled()
    t0 = time.perf_counter()
    spec = BenchmarkSpec.model_validate(req["spec"])
    settings = GenerationSettings(**req["settings"])
    prompting = Prompting(**req.get("prompting", {}))
    work = Path(req["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    name, root = _layout(req, spec, work)
    old_root = os.environ.get("LMUData")
    os.environ["LMUData"] = str(root)
    try:
        dataset, scoring = _build_dataset(spec, name, prompting)
        replay = req.get("replay")
        model = _model_for(req, settings, prompting, replay)
        records = model.prefetch(dataset)
        infer_data_job(model, work_dir=str(work), model_name=MODEL_NAME, dataset=dataset)
        pred_file = Path(get_pred_file_path(str(work), MODEL_NAME, dataset.dataset_name))
        metrics = None
        data_rows = dataset.data.to_dict(orient="records")
        if scoring == "rule":
            hits = {str(r["index"]): math_row_correct(records[str(r["index"])]["answer"], r) for r in data_rows}
        else:
            metrics = dataset.evaluate(str(pred_file), model="exact_matching", nproc=1)
            hits = _hits_from_files(work, pred_file)
            if not hits or any(str(r["index"]) not in hits for r in data_rows):
                hits = _mcq_hits(dataset, records)
        judge = judge_from_env(req.get("judge_env"))
        flips = 0
        rows = []
        for r in data_rows:
            i = str(r["index"])
            rec = records[i]
            correct = bool(hits.get(i, False))
            judged_by = "vlmeval" if scoring == "vlmeval" else "rule"
            if not correct and judge is not None:
                verdict = judge.correct(str(r.get("question", "")), str(r.get("answer", "")), rec["raw"])
                if verdict:
                    correct, judged_by, flips = True, "llm", flips + 1
            cat = r.get("category")
            rows.append({
                "index": r["index"] if not hasattr(r["index"], "item") else r["index"].item(),
                "question": str(r.get("question", "")), "prompt": rec.get("prompt"), "answer": str(r.get("answer", "")),
                "prediction": rec["raw"], "extracted": rec["answer"], "has_answer_tag": rec["has_answer_tag"],
                "correct": correct, "format_valid": bool(is_format_valid(rec["raw"])),
                "n_tokens": rec["n_tokens"], "finish_reason": rec["finish_reason"],
                "category": None if cat is None or (isinstance(cat, float) and cat != cat) else str(cat),
                "judged_by": judged_by,
            })
        info = {
            "vlmeval_dataset": dataset.dataset_name, "vlmeval_class": type(dataset).__name__, "scoring": scoring,
            "vlmeval_metrics": _table(metrics), "prediction_file": str(pred_file), "work_dir": str(work),
            "generate_seconds": round(model.generate_seconds, 3), "seconds": round(time.perf_counter() - t0, 3),
            "judge": None if judge is None else {**judge.config.to_dict(), "calls": judge.calls,
                                                  "failures": judge.failures, "flips": flips},
        }
        model.generate_seconds = 0.0
        return {"rows": rows, "info": info}
    finally:
        torch.set_grad_enabled(grad)
        if old_root is None:
            os.environ.pop("LMUData", None)
        else:
            os.environ["LMUData"] = old_root


def worker_main() -> int:
    """``python -m prism_lab.eval.vlmeval.backend --worker``: serve JSON-line requests on stdin."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # VLMEvalKit's prints go to the log (stderr), never into the protocol stream
    from prism_lab.eval.vlmeval.tv_shim import import_vlmeval

    try:
        import_vlmeval()
        proto.write(json.dumps({"ready": True}) + "\n")
    except Exception as e:  # noqa: BLE001
        proto.write(json.dumps({"ready": False, "type": type(e).__name__, "message": str(e)}) + "\n")
        return 1
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        try:
            reply = {"ok": True, **run_request(req)}
        except Exception as e:  # noqa: BLE001 - reported to the parent, which re-raises
            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "type": type(e).__name__, "message": str(e)}
        proto.write(json.dumps(reply, default=str) + "\n")
    for m in _MODEL.values():
        m.close()
    return 0


# ----------------------------------------------------------------------------------------------- backend
class VLMEvalKitBackend(EvalBackend):
    """Evaluation through VLMEvalKit (see the module doc). Registered as ``vlmevalkit``."""

    name = "vlmevalkit"

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
            self._work_root = Path(tempfile.mkdtemp(prefix="prism-vlmeval-"))
        self._work_root.mkdir(parents=True, exist_ok=True)
        return self._work_root

    def _start(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        python = self.python or find_vlmeval_python()
        self._log_file = self.work_root() / "worker.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("HF_DATASETS_OFFLINE", "1")
        log = open(self._log_file, "ab")  # noqa: SIM115 - owned by the worker's lifetime
        self.log(f"vlmevalkit: starting worker {python} (log {self._log_file})")
        self._proc = subprocess.Popen([python, "-m", "prism_lab.eval.vlmeval.backend", "--worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                      text=True, bufsize=1, cwd=str(REPO))
        log.close()
        ready = self._read_reply()
        if not ready.get("ready"):
            self.close()
            raise ConfigError(f"vlmevalkit worker ({python}) could not import VLMEvalKit: "
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
            raise PrismError(f"vlmevalkit worker exited (code {code}); last log lines:\n{self._log_tail()}")
        return json.loads(line)

    def _call(self, req: dict) -> dict:
        if self.in_process:
            return run_request(req)
        proc = self._start()
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(req) + "\n")
        proc.stdin.flush()
        reply = self._read_reply()
        if not reply.get("ok"):
            cls = _ERRORS.get(str(reply.get("type")), PrismError)
            msg = str(reply.get("message"))
            if cls is PrismError:
                msg = f"vlmevalkit worker failed: {reply.get('type')}: {msg} (log: {self._log_file})"
            raise cls(msg)
        return reply

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
        self.log(f"eval {spec.name}: VLMEvalKit run in {req['work_dir']}")
        reply = self._call(req)
        rows = reply["rows"]
        by_idx = {str(r["index"]): r for r in rows}
        ordered = [by_idx[str(it.index)] for it in items if str(it.index) in by_idx]
        if len(ordered) != len(list(items)):
            raise PrismError(f"eval {spec.name}: VLMEvalKit returned {len(rows)} rows for {len(list(items))} items")
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
            for m in _MODEL.values():
                m.close()
            _MODEL.clear()
        if self._work_root is not None and not self._keep:
            shutil.rmtree(self._work_root, ignore_errors=True)
            self._work_root = None


if __name__ == "__main__":  # pragma: no cover - the worker entry point
    if sys.argv[1:] == ["--worker"]:
        sys.exit(worker_main())
    print("usage: python -m prism_lab.eval.vlmeval.backend --worker", file=sys.stderr)
    sys.exit(2)
