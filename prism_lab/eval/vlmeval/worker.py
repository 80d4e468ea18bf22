"""The VLMEvalKit side of the ``vlmevalkit`` backend: evaluate one benchmark request (lay the TSV out,
build the dataset, run ``vlmeval.inference.infer_data_job`` with :class:`~prism_lab.eval.vlmeval.model.PrismVLM`,
score, return rows), in the worker process that ``python -m prism_lab.eval.vlmeval.worker --worker``
starts, or in-process. The protocol is JSON lines: requests on stdin, replies on a private copy of stdout
(the worker's own stdout, VLMEvalKit's prints, goes to its log). See :mod:`prism_lab.eval.vlmeval.backend`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism_lab.eval.backends import GenerationSettings
from prism_lab.eval.vlmeval.layout import layout_benchmark
from prism_lab.eval.vlmeval.verdicts import hits_from_files, mcq_hits, metrics_table
from prism_lab.eval.worker_protocol import cached_model, decode_request, serve
from prism_lab.prompts import Prompting

MODEL_NAME = "PrismVLM"


def _build_dataset(spec: Any, name: str, prompting: Prompting):
    from prism_lab.eval.vlmeval.datasets import (
        dataset_classes,
        official_class,
        register_datasets,
    )

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


MODEL_CACHE: dict[str, Any] = {}


def _model_for(req: Mapping[str, Any], settings: GenerationSettings, prompting: Prompting, replay):
    from prism_lab.eval.vlmeval.model import PrismVLM

    model = cached_model(MODEL_CACHE, req, PrismVLM, settings, prompting)
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

    from prism_lab.eval.vlmeval.judge import judge_from_env, math_row_correct

    grad = torch.is_grad_enabled()
    t0 = time.perf_counter()
    spec, settings, prompting, work = decode_request(req)
    work.mkdir(parents=True, exist_ok=True)
    name, root = layout_benchmark(req, spec, work)
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
            hits = hits_from_files(work, pred_file)
            if not hits or any(str(r["index"]) not in hits for r in data_rows):
                hits = mcq_hits(dataset, records)
        judge = judge_from_env(req.get("judge_env"))
        rows, flips = _prediction_rows(data_rows, records, hits, scoring, judge)
        info = {
            "vlmeval_dataset": dataset.dataset_name, "vlmeval_class": type(dataset).__name__, "scoring": scoring,
            "vlmeval_metrics": metrics_table(metrics), "prediction_file": str(pred_file), "work_dir": str(work),
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


def _prediction_rows(data_rows: list[dict], records: Mapping[str, dict], hits: Mapping[str, bool], scoring: str,
                     judge: Any) -> tuple[list[dict[str, Any]], int]:
    """The built-in backend's row schema for every dataset row; rows the rule marked wrong go to the LLM
    judge when one is configured. Returns (rows, how many the judge flipped to correct)."""
    from prism_lab.prompts import is_format_valid

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
    return rows, flips


def worker_main() -> int:
    """``python -m prism_lab.eval.vlmeval.worker --worker``: serve JSON-line requests on stdin."""
    from prism_lab.eval.vlmeval.tv_shim import import_vlmeval

    return serve(import_vlmeval, run_request, MODEL_CACHE.values())  # a live view: the models loaded by then


if __name__ == "__main__":  # pragma: no cover - the worker entry point
    if sys.argv[1:] == ["--worker"]:
        sys.exit(worker_main())
    print("usage: python -m prism_lab.eval.vlmeval.worker --worker", file=sys.stderr)
    sys.exit(2)
