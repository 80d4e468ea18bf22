"""The rollout contract: prompts in, ``Rollout`` objects out. Engines sample ``n`` completions per multimodal prompt, with optional log-probs.

Contract shared by every engine (HF here, vLLM in :mod:`prism_lab.rollout.vllm`):

- ``generate(prompts, n=..., ...)`` returns ``len(prompts) * n`` :class:`Rollout` objects, grouped by
  prompt (the ``n`` copies of prompt 0 first, then prompt 1, ...); ``Rollout.prompt_index`` is the
  index into ``prompts``.
- ``token_ids`` are the completion tokens only: no prompt, no padding, and the end-of-turn token
  (the checkpoint's ``generation_config.eos_token_id``) included as the last token when it was
  generated. ``finish_reason`` is ``"stop"`` in that case and ``"length"`` when ``max_new_tokens``
  tokens were produced without an eos.
- ``text`` is ``decode(token_ids, skip_special_tokens=True)``.
- ``logprobs`` (when ``return_logprobs=True``): for every completion token ``y_t``,
  ``log softmax(z_t / T)[y_t]`` where ``z_t`` are the model's RAW next-token logits (before any
  logits processor) with the vision placeholder tokens masked out (see below) and ``T`` the
  sampling temperature; ``T = 1`` for greedy decoding
  (``temperature == 0`` or ``do_sample=False``). Top-p / top-k truncation is NOT applied to these
  log-probs: they are the log-probs of the temperature-scaled policy ``pi_T``, which is exactly the
  sampling distribution when ``top_p == 1`` (the RL setting) and is the distribution the RL trainer
  recomputes in its forward pass (it divides logits by the same ``T``, as verl does). So with
  ``T = 1`` and ``top_p = 1`` they are PPO's ``old_logp`` for an on-policy update.

Vision placeholder tokens (``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_start|>``,
``<|vision_end|>``, read from the model config) are never sampled: their logits are set to -inf
(``suppress_tokens``). A completion containing an image placeholder could not be fed back through
the model (Qwen3-VL matches placeholder tokens to image features), and a trained policy gives them
~0 probability anyway. The policy is therefore the model restricted to the other tokens, and the
trainer's forward pass applies the same mask (:func:`vision_token_ids`).

Prompts: ``Prompt.messages`` are chat messages whose content is either a string, in which each
``<image>`` placeholder marks one image (the RL parquet convention), or a list of content items
(``{"type": "image"}`` / ``{"type": "text", "text": ...}``). ``Prompt.images`` are the PIL images in
order of appearance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Prompt:
    """One multimodal prompt: chat messages and the PIL (RGB) images they refer to, in order."""

    messages: list[dict]
    images: list = field(default_factory=list)


@dataclass
class Rollout:
    """One sampled completion of ``prompts[prompt_index]``."""

    prompt_index: int
    token_ids: list[int]
    text: str
    logprobs: list[float] | None
    finish_reason: str  # "stop" | "length"


@runtime_checkable
class RolloutEngine(Protocol):
    """What the RL trainer and the evaluator need from a generator."""

    def generate(
        self,
        prompts: list[Prompt],
        *,
        n: int = 1,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        seed: int | None = None,
        return_logprobs: bool = False,
        batch_size: int = 16,
    ) -> list[Rollout]: ...
