"""lmms-eval tasks for prism-lab benchmarks (imported by the lmms-eval worker, never by the core process).

A TSV benchmark (the synthetic ones, or any local file in VLMEvalKit's layout) becomes an lmms-eval task built
from local files only: its items are written as a JSONL document file (``index``, ``pos``, ``answer``) that
lmms-eval loads with the ``json`` builder (no hub), and the task config gives lmms-eval

- ``doc_to_text``: the built-in backend's user text of the item (question, options, the Yes/No ask);
- ``doc_to_visual``: the item's images, in order;
- ``process_results``: the PRISM rule judge on the response (``prism_lab.eval.builtin.score_response``), as the
  metric ``prism_correct`` (mean aggregation = accuracy).

A ``kind: lmms`` benchmark is one of lmms-eval's own tasks (``lmms_task``), loaded through its TaskManager, with
the dataset from the local Hugging Face cache (the worker runs offline).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prism_lab.prompts import Prompting

__all__ = ["METRIC", "synth_task", "task_name"]

#: The per-document metric of the TSV tasks (1.0 = the rule judge says correct).
METRIC = "prism_correct"


def task_name(spec: Any) -> str:
    """The lmms-eval task name of a TSV benchmark (``prism_`` + the name, lmms-eval-safe characters)."""
    return "prism_" + "".join(ch if ch.isalnum() else "_" for ch in spec.name)


def synth_task(spec: Any, items: Sequence[Any], prompting: Prompting, work: Path,
               settings: Any) -> tuple[Any, dict[str, int]]:
    """(an lmms-eval ``ConfigurableTask`` over ``items``, its document positions by str(index))."""
    from lmms_eval.api.task import ConfigurableTask

    from prism_lab.eval.builtin import prompt_text, score_response

    work.mkdir(parents=True, exist_ok=True)
    docs = work / "docs.jsonl"
    with docs.open("w", encoding="utf-8") as f:
        for pos, it in enumerate(items):
            f.write(json.dumps({"index": str(it.index), "pos": pos, "answer": str(it.answer)}) + "\n")
    pos_of = {str(it.index): pos for pos, it in enumerate(items)}

    def doc_to_text(doc: dict, *_a: Any, **_k: Any) -> str:
        return prompt_text(spec, items[doc["pos"]], prompting)

    def doc_to_visual(doc: dict) -> list:
        return items[doc["pos"]].images

    def process_results(doc: dict, results: list, **_k: Any) -> dict[str, float]:
        it = items[doc["pos"]]
        return {METRIC: float(score_response(str(results[0]), it.answer, kind=spec.kind,
                                             options=it.options)["correct"])}

    gen = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
           "temperature": settings.temperature, "top_p": settings.top_p, "until": []}
    config = {
        "task": task_name(spec), "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(docs)}, "cache_dir": str(work / "hf-datasets")},
        "test_split": "test", "output_type": "generate_until",
        "doc_to_text": doc_to_text, "doc_to_visual": doc_to_visual, "doc_to_target": "answer",
        "process_results": process_results, "generation_kwargs": gen, "num_fewshot": 0,
        "metric_list": [{"metric": METRIC, "aggregation": "mean", "higher_is_better": True}],
    }
    return ConfigurableTask(config=config), pos_of
