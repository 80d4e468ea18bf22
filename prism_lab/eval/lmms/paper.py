"""lmms-eval's own tasks (``kind: lmms`` benchmarks, the paper's seven), loaded in the lmms-eval worker.

``lmms_task`` names the task or group as the PRISM evaluation script does (``mathvista_testmini``, ``mmmu_pro``,
...); a group is evaluated as its leaf tasks together (one prediction row per leaf document). The decoding is
prism-lab's (the benchmark YAML's, overridden by the eval config), set as every leaf task's generation kwargs.
The dataset must already be in the local Hugging Face cache: the worker runs offline, and the caller skips a
benchmark whose dataset is not there (:func:`prism_lab.eval.lmms.backend.require_local_dataset`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["paper_tasks"]


def _leaves(tree: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value))
        elif value is not None:
            out[value.config.task] = value
    return out


def paper_tasks(spec: Any, settings: Any) -> dict[str, Any]:
    """``{leaf task name: ConfigurableTask}`` of ``spec.lmms_task``, with prism-lab's decoding."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    leaves = _leaves(get_task_dict([spec.lmms_task], TaskManager("WARNING")))
    gen = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
           "temperature": settings.temperature, "top_p": settings.top_p}
    for task in leaves.values():
        task.set_config(key="generation_kwargs", value=gen, update=True)
    return leaves
