"""The context length a vLLM engine is built for: the longest prompt plus the longest response it serves.

Without ``max_model_len`` vLLM sizes its KV cache for the model's full context (262,144 positions for
Qwen3-VL), which fails at start-up for the larger models. Every engine the stages build is therefore
given ``prompt + response`` tokens:

* RL and alignment: ``max_prompt_length + max_new_tokens`` of the stage config (longer prompts are
  filtered before rollout);
* the discriminator warm-up's (and the drift measurement's) student rollouts and evaluation, whose
  prompts have no cap: the longest of the prompts at hand, counted with the processor, plus the
  ``max_new_tokens`` they are generated with (:func:`prompts_max_model_len`; counted only when the
  engine is vLLM).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prism_lab.rollout.types import Prompt

__all__ = ["longest_prompt_tokens", "max_model_len", "prompts_max_model_len"]


def max_model_len(prompt_tokens: int, response_tokens: int) -> int:
    """``prompt_tokens + response_tokens``, both positive integers."""
    for name, value in (("prompt_tokens", prompt_tokens), ("response_tokens", response_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return prompt_tokens + response_tokens


def longest_prompt_tokens(processor: Any, prompts: Iterable[Prompt], *, chunk: int = 16) -> int:
    """Tokens of the longest of ``prompts`` as the model sees it (chat template and image tokens), counted
    ``chunk`` prompts at a time."""
    from prism_lab.rollout.inputs import build_prompt_inputs

    longest = 0
    batch: list[Prompt] = []

    def count(group: Sequence[Prompt]) -> int:
        return int(build_prompt_inputs(processor, group)["attention_mask"].sum(dim=1).max().item())

    for prompt in prompts:
        batch.append(prompt)
        if len(batch) == chunk:
            longest, batch = max(longest, count(batch)), []
    if batch:
        longest = max(longest, count(batch))
    return longest


def prompts_max_model_len(kind: str, processor: Any, prompts: Sequence[Prompt], max_new_tokens: int) -> int | None:
    """``max_model_len`` for an engine of ``kind`` serving ``prompts``: None when it resolves to the HF engine
    (or the transformers copy of ``hf_colocated``: neither needs one), else the longest prompt plus ``max_new_tokens``."""
    from prism_lab.rollout import resolve_engine_kind

    if resolve_engine_kind(kind) in ("hf", "hf_colocated"):
        return None
    return max_model_len(longest_prompt_tokens(processor, prompts), int(max_new_tokens))
