"""Warm-up comparisons: teacher vs student segments of one prompt, built from the warm-up JSONL.

Student segments come either from the JSONL (``student_source="dataset"``) or from the SFT policy
(``"policy"``, :func:`policy_student_segments`): the policy is rolled out once per warm-up prompt
(T=1, top_p=1) and each response is split at the caption boundary with token offsets. A format-invalid
response is NOT dropped: it is split at the fallback boundary ``max(1, L // 2)`` (as the alignment
stage does) and kept as a student (a legitimate negative: the teacher should be preferred); their share
is reported as ``student_invalid_rate``. :func:`heldout_split` holds out whole warm-up lines.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.rollout import Prompt, make_engine
from prism_lab.rollout.model_len import prompts_max_model_len
from prism_lab.seeds import derive_seed
from prism_lab.trainers.disc_inputs import (
    limit_pixels,
    plain_ids,
    split_rollout,
)

__all__ = ["Comparison", "build_comparisons", "heldout_split", "policy_student_segments", "warmup_prompt"]


@dataclass
class Comparison:
    """One warmup comparison: ``teacher_ids`` should score above ``student_ids`` after ``prompt``.

    Segment ids are *content* tokens (no terminator; :func:`warmup_segment` adds it). ``group`` identifies the
    warmup line (held-out splits are by group)."""

    kind: str  # "caption" | "cot" | "response"
    prompt_text: str
    image: Any  # a path, a PIL image or None
    teacher_ids: list[int]
    student_ids: list[int]
    group: int
    system_prompt: str | None = None
    student_valid: bool = True

    def to_prompt(self, max_pixels: int | None = None) -> Prompt:
        return warmup_prompt(self.prompt_text, self.image, system_prompt=self.system_prompt, max_pixels=max_pixels)


def warmup_prompt(text: str, image: Any, *, system_prompt: str | None = None, max_pixels: int | None = None) -> Prompt:
    """messages = [system?, user: [image?, text]] (docs/prism_method.md §5.2) as a rollout :class:`Prompt`."""
    from PIL import Image

    msgs: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    images = []
    if image is not None:
        im = image if isinstance(image, Image.Image) else Image.open(image)
        im = limit_pixels(im.convert("RGB"), max_pixels)
        images.append(im)
        msgs.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    else:
        msgs.append({"role": "user", "content": text})
    return Prompt(messages=msgs, images=images)


# ------------------------------------------------------------------------------------------ students
def policy_student_segments(
    policy: Any,
    processor: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 16,
    engine_kind: str = "auto",
    heartbeat: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Roll the SFT policy out once per prompt and split each response at the caption boundary.

    Returns one dict per prompt: ``caption_ids``, ``cot_ids``, ``response_ids`` (all generated tokens), ``valid``
    (format-valid; invalid ones are split at the fallback boundary) and ``finish_reason``.
    """
    engine = make_engine(policy, processor, kind=engine_kind,
                         max_model_len=prompts_max_model_len(engine_kind, processor, prompts, max_new_tokens))
    out: list[dict[str, Any]] = []
    chunk = max(1, batch_size)
    for start in range(0, len(prompts), chunk):
        rolls = engine.generate(list(prompts[start:start + chunk]), n=1, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=1.0, do_sample=True, seed=derive_seed(seed, "warmup/students", start),
                                return_logprobs=False, batch_size=chunk)
        for r in rolls:
            sp = split_rollout(processor, r.token_ids)
            out.append({"caption_ids": sp.caption_ids, "cot_ids": sp.cot_ids, "response_ids": list(r.token_ids),
                        "valid": sp.valid, "finish_reason": r.finish_reason})
        if heartbeat is not None:
            heartbeat()
    return out


def build_comparisons(
    pairs: Sequence[Any],
    processor: Any,
    *,
    student_source: str = "dataset",
    system_prompt: str | None = None,
    policy: Any | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    rollout_batch_size: int = 16,
    engine_kind: str = "auto",
    cache_path: str | Path | None = None,
    max_pixels: int | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> tuple[list[Comparison], dict[str, float]]:
    """Comparisons from :class:`prism_lab.data.warmup_jsonl.WarmupPair` objects (2 per caption/cot line).

    ``student_source="policy"`` needs ``policy``; its rollouts are cached in ``cache_path`` (JSON lines, one per
    warmup line, reused when the line count matches). ``max_new_tokens`` None = twice the longest teacher
    response (caption + cot) in tokens, at least 64.
    """
    if student_source not in ("policy", "dataset"):
        raise ValueError(f"student_source must be 'policy' or 'dataset', got {student_source!r}")
    # group pairs by their source line, in file order
    groups: dict[tuple[str, int], list[Any]] = {}
    for p in pairs:
        groups.setdefault((getattr(p, "source", ""), int(p.line)), []).append(p)
    keys = list(groups)
    stats: dict[str, float] = {"lines": float(len(keys)), "comparisons": 0.0}

    students: list[dict[str, Any]] | None = None
    if student_source == "policy":
        if policy is None:
            raise ValueError("student_source='policy' needs the SFT policy model")
        cache = Path(cache_path) if cache_path is not None else None
        if cache is not None and cache.is_file():
            rows = [json.loads(x) for x in cache.read_text().splitlines() if x.strip()]
            if len(rows) == len(keys):
                students = rows
                stats["students_from_cache"] = 1.0
        if students is None:
            if max_new_tokens is None:
                longest = 0
                for k in keys:
                    g = groups[k]
                    longest = max(longest, sum(len(plain_ids(processor, p.teacher)) for p in g))
                max_new_tokens = max(64, 2 * longest)
            prompts = [warmup_prompt(groups[k][0].prompt, groups[k][0].image, system_prompt=system_prompt,
                                     max_pixels=max_pixels) for k in keys]
            students = policy_student_segments(policy, processor, prompts, max_new_tokens=max_new_tokens, seed=seed,
                                               batch_size=rollout_batch_size, engine_kind=engine_kind,
                                               heartbeat=heartbeat)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in students))
                tmp.replace(cache)
        n_inv = sum(1 for s in students if not s["valid"])
        stats["student_invalid_rate"] = n_inv / max(1, len(students))
        stats["student_truncated_rate"] = sum(1 for s in students if s["finish_reason"] == "length") / max(1, len(students))
        stats["student_mean_length"] = sum(len(s["response_ids"]) for s in students) / max(1, len(students))

    comps: list[Comparison] = []
    for gi, k in enumerate(keys):
        for p in groups[k]:
            t_ids = plain_ids(processor, p.teacher)
            valid = True
            if students is None:
                s_ids = plain_ids(processor, p.student)
            else:
                st = students[gi]
                valid = bool(st["valid"])
                s_ids = {"caption": st["caption_ids"], "cot": st["cot_ids"]}.get(p.kind, st["response_ids"])
            comps.append(Comparison(kind=p.kind, prompt_text=p.prompt, image=p.image, teacher_ids=t_ids,
                                    student_ids=list(s_ids), group=gi, system_prompt=system_prompt,
                                    student_valid=valid))
    stats["comparisons"] = float(len(comps))
    return comps, stats


def heldout_split(comps: Sequence[Comparison], fraction: float, seed: int) -> tuple[list[Comparison], list[Comparison]]:
    """(train, heldout) split by ``group``; at least one group is held out when ``fraction > 0`` and there are
    two or more groups."""
    groups = sorted({c.group for c in comps})
    random.Random(derive_seed(seed, "warmup/heldout")).shuffle(groups)
    n_held = 0
    if fraction > 0 and len(groups) >= 2:
        n_held = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(groups[:n_held])
    return [c for c in comps if c.group not in held], [c for c in comps if c.group in held]


# ------------------------------------------------------------------------------------------ training
