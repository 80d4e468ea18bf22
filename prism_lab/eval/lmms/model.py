"""An lmms-eval model class that wraps any prism-lab checkpoint (runs in the lmms-eval worker).

``PrismLMMS(checkpoint_dir, settings=..., prompting=...)`` is a "simple" ``lmms_eval.api.model.lmms``: each
``generate_until`` request carries lmms-eval's context text, its generation kwargs and the task's
``doc_to_visual``. The chat prompt is the built-in backend's (``prism_lab.eval.builtin.user_content``): the paper's
system prompt as a system message (unless the checkpoint's ``prism_prompting.json`` says its data had none), then
one user turn with the images and the context text (``<image k>`` tags placed as VLMEvalKit places them).

Generation goes through the built-in backend's rollout engine (HF generate on CPU; vLLM when the ``gpu`` extra
is installed and a GPU is there, ``engine_kind``), with prism-lab's generation settings, requests taken in
document order and in chunks of ``batch_size``, each sampled chunk seeded with ``seed + position of its first
document`` — the built-in backend's order and seeds, so greedy and seeded runs give its exact responses.

``replay`` (``{index: response}``) returns stored responses instead of generating (parity tests, re-scoring).
The raw response, its token count and finish reason of every document are kept in :attr:`records`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lmms_eval.api.model import lmms

from prism_lab.eval.backends import GenerationSettings
from prism_lab.prompts import SYSTEM_PROMPT, Prompting

__all__ = ["PrismLMMS"]


class PrismLMMS(lmms):
    """lmms-eval model over a prism-lab checkpoint (see the module doc)."""

    is_simple = True

    def __init__(self, checkpoint_dir: str | Path, *, settings: GenerationSettings, prompting: Prompting,
                 batch_size: int = 16, engine_kind: str = "auto", threads: int | None = None,
                 index_of: Callable[[str, str, int], str] | None = None,
                 replay: Mapping[str, str] | None = None) -> None:
        super().__init__()
        from prism_lab.eval.builtin import BuiltinBackend

        self.checkpoint_dir = Path(checkpoint_dir)
        self.settings = settings
        self.prompting = prompting
        self.batch_size = max(1, int(batch_size))
        self.index_of = index_of or (lambda task, split, doc_id: str(doc_id))
        self.replay = {str(k): str(v) for k, v in (replay or {}).items()}
        self._builtin = BuiltinBackend(batch_size=self.batch_size, prompting=prompting, threads=threads,
                                       engine_kind=engine_kind, progress=False)
        self.records: dict[str, dict[str, Any]] = {}  # str(index) -> {"raw", "n_tokens", "finish_reason", "prompt"}
        self.generate_seconds = 0.0

    def close(self) -> None:
        self._builtin.close()

    def clean(self) -> None:
        """lmms-eval calls this after every evaluation to drop the model; the worker keeps it for the checkpoint's
        next benchmark (:meth:`close` releases it), and skips lmms-eval's full ``gc.collect()`` (seconds a call)."""

    # -- prompts
    def _prompt(self, context: str, visuals: Any):
        from prism_lab.eval.builtin import user_content
        from prism_lab.rollout import Prompt

        images = [v.convert("RGB") for v in (visuals or []) if v is not None]
        content, order = user_content(str(context), len(images))
        messages: list[dict[str, Any]] = []
        if self.prompting.system_prompt:
            messages.append({"role": "system", "content": SYSTEM_PROMPT})
        messages.append({"role": "user", "content": content})
        return Prompt(messages=messages, images=[images[k] for k in order])

    # -- lmms-eval interface
    def generate_until(self, requests) -> list[str]:
        reqs = sorted(enumerate(requests), key=lambda p: (p[1].args[4], p[1].args[3]))  # task, document order
        docs = []
        for pos, req in reqs:
            context, _gen_kwargs, doc_to_visual, doc_id, task, split = req.args[:6]
            doc = self.task_dict[task][split][doc_id]
            docs.append((pos, self.index_of(task, split, doc_id), context, doc_to_visual(doc)))
        out: list[str] = [""] * len(requests)
        if self.replay:
            for pos, idx, context, _ in docs:
                if idx not in self.replay:
                    raise KeyError(f"replay has no response for index {idx!r}")
                self.records[idx] = {"raw": self.replay[idx], "n_tokens": None, "finish_reason": None,
                                     "prompt": str(context)}
                out[pos] = self.replay[idx]
            return out
        prompts = [self._prompt(context, visuals) for _, _, context, visuals in docs]
        engine = self._builtin.engine(self.checkpoint_dir, prompts, self.settings.max_new_tokens)
        kw = self._builtin._gen_kwargs(engine, self.settings)
        for start in range(0, len(docs), self.batch_size):
            chunk = docs[start : start + self.batch_size]
            seed = self.settings.seed + start if self.settings.do_sample else None
            t0 = time.perf_counter()
            res = engine.generate(prompts[start : start + self.batch_size], seed=seed, batch_size=self.batch_size,
                                  **kw)
            self.generate_seconds += time.perf_counter() - t0
            if len(res) != len(chunk):
                raise RuntimeError(f"rollout engine returned {len(res)} completions for {len(chunk)} prompts")
            for ro in res:
                pos, idx, context, _ = chunk[ro.prompt_index]
                self.records[idx] = {"raw": ro.text, "n_tokens": len(ro.token_ids), "finish_reason": ro.finish_reason,
                                     "prompt": str(context)}
                out[pos] = ro.text
        return out

    def loglikelihood(self, requests):  # pragma: no cover - the paper's tasks all generate
        raise NotImplementedError("PrismLMMS evaluates generation tasks only (loglikelihood is not supported)")

    def generate_until_multi_round(self, requests):  # pragma: no cover
        raise NotImplementedError("PrismLMMS evaluates single-turn generation tasks only")
