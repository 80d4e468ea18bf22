"""The built-in evaluation backend: generate with the rollout engine, score with the rule judge.

Prompts follow the paper's eval (docs/prism_method.md §8): the §2 system prompt as a system
message (unless the checkpoint's ``prism_prompting.json`` says its data had none), then one user turn
with the image followed by the question. Rows with several images show them all, in order, before
the text; when the text names them with ``<image k>`` tags (MMMU's layout) each tag is replaced by
image k in place, as VLMEvalKit's ``split_MMMU`` does (vlmeval/dataset/image_base.py). Text-only rows
(kept by a benchmark's ``keep_noimg``) have no image. MCQ rows show their options as ``A. ...`` lines plus
"Answer with the letter." (the same text the synthetic training prompts use); Yes/No questions ask
for Yes or No.

Scoring of one response:

- ``format_valid``: the §2 regex (``prompts.is_format_valid``);
- the judged answer is the content of the first ``<answer>`` block, or the whole response when there
  is none (the paper's eval pattern: "take the <answer> content if present");
- ``correct``: the §7.1 rule judge (``rewards.judge``) against the ground truth. Rows with
  options accept the option letter in any form the judge reads ("B", "(B)", "answer is B", ...) and,
  when no letter can be read, the text of the right option (and of no other option). Yes/No rows also
  accept an answer that contains exactly one of the words yes / no.

Generation runs in chunks of ``batch_size`` items (one progress log line per chunk). Sampled runs seed
each chunk with ``seed + index of its first item``, so they are reproducible for a given batch size.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError
from prism_lab.eval.backends import BenchmarkResult, EvalBackend, GenerationSettings
from prism_lab.prompts import SYSTEM_PROMPT, Prompting, extract_answer, is_format_valid

__all__ = [
    "YESNO_INSTRUCTION",
    "BuiltinBackend",
    "build_prompt",
    "judge_answer",
    "prompt_text",
    "score_response",
    "score_rows",
]

YESNO_INSTRUCTION = "Answer Yes or No."
_WORD_RE = re.compile(r"[a-z]+")


# ----------------------------------------------------------------------------------------------- prompts
def prompt_text(spec: Any, item: Any, prompting: Prompting) -> str:
    """The user text of one item: question (with hint and options for MCQ rows), plus the Yes/No ask."""
    text = item.prompt  # question, "Hint: ..." and "A. ..." option lines + "Answer with the letter."
    if spec.kind == "yesno" and not item.options and prompting.yesno_instruction:
        text = f"{text.rstrip()}\n{YESNO_INSTRUCTION}"
    return text


_IMAGE_TAG = re.compile(r"<image (\d+)>")


def user_content(text: str, n_images: int) -> tuple[list[dict[str, Any]], list[int]]:
    """Chat content items for a text with ``n_images`` images, and which image (0-based) each image item shows.

    Without ``<image k>`` tags: every image, in order, then the text. With tags: the text split at the tags,
    tag k replaced by image k (an image named twice is shown twice; one never named is not shown).
    """
    tags = list(_IMAGE_TAG.finditer(text)) if n_images else []
    if not tags or any(not 1 <= int(m.group(1)) <= n_images for m in tags):
        return [*({"type": "image"} for _ in range(n_images)), {"type": "text", "text": text}], list(range(n_images))
    content: list[dict[str, Any]] = []
    order: list[int] = []
    pos = 0
    for m in tags:
        if text[pos:m.start()]:
            content.append({"type": "text", "text": text[pos:m.start()]})
        content.append({"type": "image"})
        order.append(int(m.group(1)) - 1)
        pos = m.end()
    if text[pos:]:
        content.append({"type": "text", "text": text[pos:]})
    return content, order


def build_prompt(spec: Any, item: Any, prompting: Prompting):
    """A rollout ``Prompt`` for one benchmark item (images first, then the text, as in training)."""
    from prism_lab.rollout import Prompt

    messages: list[dict[str, Any]] = []
    if prompting.system_prompt:
        messages.append({"role": "system", "content": SYSTEM_PROMPT})
    images = item.images
    content, order = user_content(prompt_text(spec, item, prompting), len(images))
    messages.append({"role": "user", "content": content})
    return Prompt(messages=messages, images=[images[k] for k in order])


# ----------------------------------------------------------------------------------------------- scoring
def _yes_no(s: str) -> str | None:
    words = set(_WORD_RE.findall(s.lower()))
    if ("yes" in words) == ("no" in words):
        return None
    return "Yes" if "yes" in words else "No"


def judge_answer(answer: str, gt: str, *, kind: str, options: Mapping[str, str] | None = None) -> bool:
    """True when the extracted ``answer`` matches the ground truth ``gt`` of a row of ``kind``."""
    from prism_lab.rewards import extract_mcq_letter, judge, normalise

    answer = (answer or "").strip()
    gt = str(gt).strip()
    if not answer or not gt:
        return False
    if judge(answer, gt):
        return True
    if options:
        if extract_mcq_letter(normalise(answer)) is not None:
            return False  # a letter was given and the judge said it is the wrong one
        hits = [k for k, v in options.items() if str(v).strip() and judge(answer, str(v))]
        return hits == [gt]
    if kind == "yesno":
        want = _yes_no(gt)
        return want is not None and _yes_no(answer) == want
    return False


def score_response(text: str, gt: str, *, kind: str, options: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{"extracted", "has_answer_tag", "correct", "format_valid"}`` for one decoded response."""
    text = text or ""
    extracted = extract_answer(text)
    has_tag = extracted is not None
    answer = extracted if has_tag else text.strip()
    return {
        "extracted": answer,
        "has_answer_tag": has_tag,
        "correct": bool(judge_answer(answer, gt, kind=kind, options=options)),
        "format_valid": bool(is_format_valid(text)),
    }


def _row(spec: Any, item: Any, prompting: Prompting, text: str, n_tokens: int | None,
         finish_reason: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "index": item.index,
        "question": item.question,
        "prompt": prompt_text(spec, item, prompting),
        "answer": item.answer,
        "prediction": text,
    }
    row.update(score_response(text, item.answer, kind=spec.kind, options=item.options))
    row.update(n_tokens=n_tokens, finish_reason=finish_reason, category=item.category)
    return row


def score_rows(spec: Any, items: Sequence[Any], rows: Sequence[Mapping[str, Any]],
               prompting: Prompting | None = None) -> list[dict[str, Any]]:
    """Re-score stored rows (by ``index``) against the items, keeping the stored prediction text."""
    by_index = {str(r.get("index")): r for r in rows}
    out = []
    for it in items:
        r = by_index.get(str(it.index))
        if r is None:
            raise KeyError(f"no stored prediction for index {it.index!r}")
        out.append(_row(spec, it, prompting or Prompting(), str(r.get("prediction") or ""), r.get("n_tokens"),
                        r.get("finish_reason")))
    return out


# ----------------------------------------------------------------------------------------------- backend
class BuiltinBackend(EvalBackend):
    """Batched generation with ``prism_lab.rollout`` (left padding, KV cache) and the rule judge."""

    name = "builtin"

    def __init__(self, *, engine_kind: str = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine_kind = engine_kind
        self._engine = None
        self._engine_dir: Path | None = None
        self._engine_len = 0  # the vLLM engine's max_model_len (0: an HF engine, or none yet)

    # -- model
    def engine(self, checkpoint_dir: str | Path, prompts: Iterable[Any] = (), max_new_tokens: int = 1):
        """The rollout engine for ``checkpoint_dir`` (the model is loaded on first use only). A vLLM engine serves
        the longest of ``prompts`` plus ``max_new_tokens`` (prism_lab.rollout.model_len); it is rebuilt when a
        benchmark needs more than the current one was built for."""
        from prism_lab import rollout
        from prism_lab.rollout.model_len import longest_prompt_tokens, max_model_len

        d = Path(checkpoint_dir)
        vllm = rollout.resolve_engine_kind(self.engine_kind) == "vllm"
        current = self._engine if self._engine_dir == d else None
        loaded = None if current is not None else self._load(d)
        need = None
        if vllm:
            processor = current.processor if current is not None else loaded[1]
            need = max_model_len(longest_prompt_tokens(processor, prompts), int(max_new_tokens))
        if current is not None and (need or 0) <= self._engine_len:
            return current
        model, processor = loaded if loaded is not None else self._load(d)
        self.close()
        self._engine = rollout.make_engine(model, processor, kind=self.engine_kind, checkpoint_dir=str(d),
                                           max_model_len=need)
        self._engine_dir = d
        self._engine_len = need or 0
        return self._engine

    def _load(self, d: Path) -> tuple[Any, Any]:
        import torch

        from prism_lab.models import load_policy

        if self.threads:
            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        model, processor = load_policy(d)
        self.log(f"loaded {d} in {time.perf_counter() - t0:.1f}s")
        return model, processor

    def close(self) -> None:
        self._engine = None
        self._engine_dir = None
        self._engine_len = 0

    def inference_engine(self) -> str:
        from prism_lab.rollout import resolve_engine_kind

        return resolve_engine_kind(self.engine_kind)

    # -- generation
    def _gen_kwargs(self, engine: Any, settings: GenerationSettings) -> dict[str, Any]:
        kw: dict[str, Any] = {"n": 1, "max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
        if settings.do_sample:
            kw.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kw.update(temperature=1.0, top_p=1.0)
        if settings.top_k > 0:
            import inspect

            try:
                accepts = "top_k" in inspect.signature(engine.generate).parameters
            except (TypeError, ValueError):
                accepts = False
            if not accepts:
                raise ConfigError(
                    f"top_k={settings.top_k} is not supported by the rollout engine {type(engine).__name__} "
                    "(it samples with top-k disabled); set top_k: -1 in the benchmark YAML"
                )
            kw["top_k"] = settings.top_k
        return kw

    def evaluate(self, checkpoint_dir: str | Path, spec: Any, items: Sequence[Any],
                 settings: GenerationSettings) -> BenchmarkResult:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        items = list(items)
        engine = self.engine(checkpoint_dir, (build_prompt(spec, it, self.prompting) for it in items),
                             settings.max_new_tokens)
        kw = self._gen_kwargs(engine, settings)
        bs = max(1, int(self.batch_size))
        rows: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        n_correct = 0
        columns = (TextColumn("eval {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, disable=not self.progress, transient=False) as bar:
            task = bar.add_task(spec.name, total=len(items))
            for start in range(0, len(items), bs):
                chunk = items[start : start + bs]
                prompts = [build_prompt(spec, it, self.prompting) for it in chunk]
                seed = settings.seed + start if settings.do_sample else None
                outs = engine.generate(prompts, seed=seed, batch_size=bs, **kw)
                if len(outs) != len(chunk):
                    raise RuntimeError(f"rollout engine returned {len(outs)} completions for {len(chunk)} prompts")
                for ro in sorted(outs, key=lambda r: r.prompt_index):
                    it = chunk[ro.prompt_index]
                    row = _row(spec, it, self.prompting, ro.text, len(ro.token_ids), ro.finish_reason)
                    n_correct += row["correct"]
                    rows.append(row)
                bar.advance(task, len(chunk))
                done = start + len(chunk)
                self.log(
                    f"eval {spec.name}: {done}/{len(items)} items, {time.perf_counter() - t0:.1f}s, "
                    f"accuracy so far {n_correct / done:.3f}"
                )
        return BenchmarkResult(benchmark=spec.name, rows=rows, settings=settings, backend=self.name,
                               info={"generate_seconds": round(time.perf_counter() - t0, 3)})

    def rescore(self, spec: Any, items: Sequence[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return score_rows(spec, items, rows, self.prompting)
