"""A VLMEvalKit model class that wraps any prism-lab checkpoint.

``PrismVLM(checkpoint_dir, settings=..., prompting=...)`` is a ``vlmeval.vlm.base.BaseModel``:

- chat prompt: the paper's system prompt (docs/prism_method.md §2) as a system message (unless the checkpoint's
  ``prism_prompting.json`` says its data had none), then one user turn with VLMEvalKit's message items in
  order (images and text interleaved as the dataset built them);
- generation: the prism-lab rollout engine (``prism_lab.rollout``: HF generate with left padding and KV
  cache on CPU, vLLM when installed with a GPU), with the benchmark's generation settings;
- the returned prediction is the content of the first ``<answer>`` block (the whole response when there
  is none), which is what VLMEvalKit's scorers then see. The raw response, its token count and finish
  reason are kept in :attr:`PrismVLM.records` (by row index) for the caller.

Batching: VLMEvalKit's ``infer_data`` asks for one row at a time. :meth:`PrismVLM.prefetch` builds every
row's message exactly as ``infer_data`` will, generates them in chunks of ``batch_size`` (each sampled
chunk seeded with ``seed + index of its first row``, as the built-in backend does) and keeps the answers;
``generate_inner`` then serves them by message. Rows it has not seen are generated one by one.

``replay`` (``{index: response text}``) makes the model return stored responses instead of generating
(re-scoring stored predictions through VLMEvalKit; parity tests).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prism_lab.eval.backends import GenerationSettings
from prism_lab.eval.vlmeval.judge import answer_of
from prism_lab.eval.vlmeval.tv_shim import import_vlmeval
from prism_lab.prompts import SYSTEM_PROMPT, Prompting

import_vlmeval()

from vlmeval.vlm.base import BaseModel  # noqa: E402

__all__ = ["PrismVLM", "message_key", "row_message"]


def message_key(message: Sequence[Mapping[str, Any]]) -> str:
    """A hashable key of a VLMEvalKit message (list of ``{"type", "value"}``)."""
    return json.dumps([[str(m.get("type")), str(m.get("value"))] for m in message], ensure_ascii=False)


def row_message(model: Any, dataset: Any, line: Any) -> list[dict]:
    """The message ``vlmeval.inference.infer_data`` builds for one row (same precedence)."""
    name = dataset.dataset_name
    if getattr(dataset, "force_use_dataset_prompt", False):
        return dataset.build_prompt(line)
    if hasattr(model, "use_custom_prompt") and model.use_custom_prompt(name):
        return model.build_prompt(line, dataset=name)
    return dataset.build_prompt(line)


class PrismVLM(BaseModel):
    """VLMEvalKit model over a prism-lab checkpoint (see the module doc)."""

    INTERLEAVE = True
    allowed_types = ["text", "image"]

    def __init__(self, checkpoint_dir: str | Path | None = None, *, settings: GenerationSettings | None = None,
                 prompting: Prompting | None = None, batch_size: int = 16, engine_kind: str = "auto",
                 threads: int | None = None, replay: Mapping[Any, str] | None = None, log: Any = None) -> None:
        super().__init__()
        from prism_lab.eval.builtin import BuiltinBackend

        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.settings = settings or GenerationSettings(max_new_tokens=512, do_sample=False, temperature=0.0,
                                                       top_p=1.0)
        self.prompting = prompting or (Prompting.from_checkpoint(self.checkpoint_dir) if self.checkpoint_dir
                                       else Prompting())
        self.batch_size = max(1, int(batch_size))
        self.replay = {str(k): str(v) for k, v in (replay or {}).items()}
        # The built-in backend owns model loading and the rollout-engine kwargs (one implementation).
        self._builtin = BuiltinBackend(batch_size=self.batch_size, prompting=self.prompting, threads=threads,
                                       engine_kind=engine_kind, log=log, progress=False)
        self._ready: dict[str, dict] = {}  # message key -> record, filled by prefetch
        self.records: dict[str, dict] = {}  # str(row index) -> record of the last prefetch
        self.generate_seconds = 0.0

    # -- configuration
    def configure(self, *, settings: GenerationSettings | None = None, prompting: Prompting | None = None,
                  replay: Mapping[Any, str] | None = None) -> None:
        """Switch generation settings / prompting / replayed responses between benchmarks."""
        if settings is not None:
            self.settings = settings
        if prompting is not None:
            self.prompting = prompting
            self._builtin.prompting = prompting
        self.replay = {str(k): str(v) for k, v in (replay or {}).items()}
        self._ready.clear()
        self.records.clear()

    def close(self) -> None:
        self._builtin.close()

    # -- prompts
    def _chat(self, message: Sequence[Mapping[str, Any]]):
        from PIL import Image

        from prism_lab.rollout import Prompt

        content: list[dict] = []
        images = []
        for m in message:
            if m["type"] == "image":
                with Image.open(m["value"]) as im:
                    images.append(im.convert("RGB"))
                content.append({"type": "image"})
            elif m["type"] == "text":
                content.append({"type": "text", "text": str(m["value"])})
            else:  # pragma: no cover - BaseModel.generate checks allowed_types
                raise ValueError(f"PrismVLM: unsupported message item type {m['type']!r}")
        messages: list[dict] = []
        if self.prompting.system_prompt:
            messages.append({"role": "system", "content": SYSTEM_PROMPT})
        messages.append({"role": "user", "content": content})
        return Prompt(messages=messages, images=images)

    @staticmethod
    def _record(text: str, n_tokens: int | None, finish_reason: str | None) -> dict:
        answer, has_tag = answer_of(text)
        return {"raw": text, "answer": answer, "has_answer_tag": has_tag, "n_tokens": n_tokens,
                "finish_reason": finish_reason}

    def _generate(self, messages: Sequence[Sequence[Mapping[str, Any]]], seed_base: int) -> list[dict]:
        engine = self._builtin.engine(self.checkpoint_dir, (self._chat(m) for m in messages),
                                      self.settings.max_new_tokens)
        kw = self._builtin._gen_kwargs(engine, self.settings)
        out: list[dict] = []
        for start in range(0, len(messages), self.batch_size):
            chunk = messages[start : start + self.batch_size]
            prompts = [self._chat(m) for m in chunk]
            seed = self.settings.seed + seed_base + start if self.settings.do_sample else None
            t0 = time.perf_counter()
            res = engine.generate(prompts, seed=seed, batch_size=self.batch_size, **kw)
            self.generate_seconds += time.perf_counter() - t0
            if len(res) != len(chunk):
                raise RuntimeError(f"rollout engine returned {len(res)} completions for {len(chunk)} prompts")
            for ro in sorted(res, key=lambda r: r.prompt_index):
                out.append(self._record(ro.text, len(ro.token_ids), ro.finish_reason))
        return out

    # -- batching
    def prefetch(self, dataset: Any) -> dict[str, dict]:
        """Generate (or replay) every row of ``dataset`` in batches; returns records by str(index)."""
        data = dataset.data
        self.set_dump_image(dataset.dump_image)
        idx = [str(x) for x in data["index"]]
        msgs = [row_message(self, dataset, data.iloc[i]) for i in range(len(data))]
        if self.replay:
            missing = [i for i in idx if i not in self.replay]
            if missing:
                raise KeyError(f"replay has no response for index {missing[0]!r} of {dataset.dataset_name}")
            recs = [self._record(self.replay[i], None, None) for i in idx]
        else:
            recs = self._generate(msgs, 0)
        for m, r in zip(msgs, recs):
            r["prompt"] = "\n".join(str(x["value"]) for x in m if x.get("type") == "text")
            self._ready[message_key(m)] = r
        self.records = dict(zip(idx, recs))
        return self.records

    # -- VLMEvalKit interface
    def generate_inner(self, message, dataset=None):
        rec = self._ready.get(message_key(message))
        if rec is None:
            if self.replay:
                raise KeyError(f"replay: no stored response for a message of {dataset}")
            rec = self._generate([message], 0)[0]
        return rec["answer"]
