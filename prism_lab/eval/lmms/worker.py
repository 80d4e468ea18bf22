"""The lmms-eval side of the ``lmms_eval`` backend: evaluate one benchmark request with lmms-eval's
``evaluator.evaluate`` (request construction, filters, per-document ``process_results``, aggregation) and
:class:`~prism_lab.eval.lmms.model.PrismLMMS`, in the worker process that
``python -m prism_lab.eval.lmms.worker --worker`` starts (or in-process). Same JSON-line protocol as the
VLMEvalKit worker (:mod:`prism_lab.eval.vlmeval.worker`); see :mod:`prism_lab.eval.lmms.backend`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism_lab.eval.backends import GenerationSettings
from prism_lab.eval.worker_protocol import cached_model, decode_request, serve
from prism_lab.prompts import Prompting

MODEL_CACHE: dict[str, Any] = {}


def import_lmms_eval() -> Any:
    """``import lmms_eval`` (torchvision shim first: the CPU torch cannot load torchvision's C++ ops); the
    caller's grad mode is kept."""
    import torch

    from prism_lab.eval.vlmeval.tv_shim import apply

    grad = torch.is_grad_enabled()
    apply()
    import lmms_eval.evaluator  # noqa: F401 - the import is the point

    torch.set_grad_enabled(grad)
    import lmms_eval

    return lmms_eval


def _model_for(req: Mapping[str, Any], settings: GenerationSettings, prompting: Prompting):
    from prism_lab.eval.lmms.model import PrismLMMS

    model = cached_model(MODEL_CACHE, req, PrismLMMS, settings, prompting)
    model.settings, model.prompting, model._builtin.prompting = settings, prompting, prompting
    model.replay = {str(k): str(v) for k, v in (req.get("replay") or {}).items()}
    model.records = {}
    model.task_dict = {}
    return model


def _tsv_task(req: Mapping[str, Any], spec: Any, settings: GenerationSettings, prompting: Prompting, work: Path):
    from prism_lab.data.bench_tsv import read_benchmark_tsv
    from prism_lab.eval.lmms.tasks import synth_task

    items = read_benchmark_tsv(req["tsv"], keep_noimg=spec.keep_noimg)
    if req.get("indices") is not None:
        want = {str(i) for i in req["indices"]}
        items = [it for it in items if str(it.index) in want]
    task, _pos = synth_task(spec, items, prompting, work, settings)
    return task, items


def _row(spec: Any, model: Any, name: str, s: Mapping[str, Any], items: Any, score_response: Any) -> dict[str, Any]:
    """One prediction row in the built-in backend's schema from lmms-eval's logged sample ``s``."""
    from prism_lab.eval.lmms.tasks import METRIC

    idx = model.index_of(name, "test", s["doc_id"])
    rec = model.records[idx]
    if items is not None:
        it = items[s["doc_id"]]
        row = {"index": it.index, "question": it.question, "answer": it.answer, "category": it.category,
               **score_response(rec["raw"], it.answer, kind=spec.kind, options=it.options)}
        row["correct"] = bool(s[METRIC])  # lmms-eval's verdict (process_results on its filtered response)
    else:  # the task's first numeric per-document metric is the item's score
        score = next((float(v) for k, v in s.items() if k not in ("doc_id", "target") and isinstance(v, (int, float))
                      and not isinstance(v, bool) and math.isfinite(v)), None)
        row = {"index": idx, "question": None, "answer": str(s.get("target")), "category": name,
               "correct": bool(score), "score": score}
    row.update(prompt=rec["prompt"], prediction=rec["raw"], n_tokens=rec["n_tokens"],
               finish_reason=rec["finish_reason"], judged_by="lmms_eval")
    return row


def run_request(req: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate one benchmark through lmms-eval; returns ``{"rows", "info"}``."""
    import_lmms_eval()
    import torch
    from lmms_eval.evaluator import evaluate

    from prism_lab.eval.builtin import score_response

    grad = torch.is_grad_enabled()
    t0 = time.perf_counter()
    spec, settings, prompting, work = decode_request(req)
    try:
        model = _model_for(req, settings, prompting)
        if spec.kind == "lmms":
            from prism_lab.eval.lmms.paper import paper_tasks

            tasks, items = paper_tasks(spec, settings), None
        else:
            task, items = _tsv_task(req, spec, settings, prompting, work)
            tasks = {task.config.task: task}
        docs = {}
        for name, task in tasks.items():
            model.task_dict[name] = task.dataset
            docs[name] = task.test_docs()
        if items is not None:
            model.index_of = lambda t, _s, doc_id: str(docs[t][doc_id]["index"])
        else:  # an lmms-eval group: its leaf tasks' documents, named task:doc_id
            model.index_of = lambda t, _s, doc_id: f"{t}:{doc_id}"
        out = evaluate(model, tasks, limit=settings.limit if items is None else None, bootstrap_iters=0,
                       log_samples=True, process_docs_parallel=1, verbosity="WARNING")
        rows = []
        for name in tasks:
            for s in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
                rows.append(_row(spec, model, name, s, items, score_response))
        metrics = {name: {k: v for k, v in out["results"][name].items() if isinstance(v, (int, float))}
                   for name in tasks}
        info = {"lmms_tasks": sorted(tasks), "lmms_metrics": metrics, "work_dir": str(work),
                "generate_seconds": round(model.generate_seconds, 3), "seconds": round(time.perf_counter() - t0, 3)}
        model.generate_seconds = 0.0
        return {"rows": rows, "info": info}
    finally:
        torch.set_grad_enabled(grad)


def worker_main() -> int:
    """``python -m prism_lab.eval.lmms.worker --worker``: serve JSON-line requests on stdin."""
    return serve(import_lmms_eval, run_request, MODEL_CACHE.values())  # a live view: the models loaded by then


if __name__ == "__main__":  # pragma: no cover - the worker entry point
    if sys.argv[1:] == ["--worker"]:
        sys.exit(worker_main())
    print("usage: python -m prism_lab.eval.lmms.worker --worker", file=sys.stderr)
    sys.exit(2)
