"""Rollout engines: sample ``n`` completions per multimodal prompt, with optional log-probs.

``types`` holds the contract every engine keeps, ``inputs`` turns prompts into model inputs, ``hf`` is
the default engine and ``vllm`` the optional GPU one; :func:`make_engine` picks one.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from prism_lab.errors import ConfigError, PrismError
from prism_lab.prompts import IMAGE_PLACEHOLDER
from prism_lab.rollout.hf import HFGenerateEngine
from prism_lab.rollout.inputs import (
    build_prompt_inputs,
    eos_token_ids,
    pad_token_id,
    prompt_texts,
    repeat_batch,
    text_position_ids,
    to_content_messages,
    vision_token_ids,
)
from prism_lab.rollout.types import Prompt, Rollout, RolloutEngine

__all__ = [
    "IMAGE_PLACEHOLDER",
    "HFGenerateEngine",
    "Prompt",
    "Rollout",
    "RolloutEngine",
    "build_prompt_inputs",
    "eos_token_ids",
    "make_engine",
    "pad_token_id",
    "prompt_texts",
    "repeat_batch",
    "resolve_engine_kind",
    "text_position_ids",
    "to_content_messages",
    "vision_token_ids",
    "resolve_engine_kind",
    "vllm_available",
]


def vllm_available() -> bool:
    """True when the vllm package is importable (says nothing about a GPU)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def resolve_engine_kind(kind: str = "auto") -> str:
    """The engine ``make_engine(kind=kind)`` builds: ``hf`` or ``vllm`` (``auto``: vLLM when it is installed AND a
    GPU is present, else HF); loads no model (the evaluation fingerprint names the engine of a cached result)."""
    if kind not in ("auto", "hf", "vllm"):
        raise ConfigError(f"unknown rollout engine {kind!r}; expected auto, hf or vllm")
    if kind == "auto":
        return "vllm" if (vllm_available() and torch.cuda.is_available()) else "hf"
    return kind


def make_engine(model, processor, kind: str = "auto", *, max_model_len: int | None = None,
                **kwargs: Any) -> RolloutEngine:
    """A rollout engine for ``model``.

    ``kind``: ``"hf"`` (transformers generate), ``"vllm"`` (requires vllm and a GPU; the engine is
    built from a checkpoint directory, ``kwargs["checkpoint_dir"]``, or from ``model`` saved to a
    temporary directory), or ``"auto"`` (:func:`resolve_engine_kind`). ``max_model_len``: the longest
    prompt plus the longest response the engine serves (:mod:`prism_lab.rollout.model_len`); a vLLM
    engine needs it, the HF engine ignores it.
    """
    kind = resolve_engine_kind(kind)
    if kind == "hf":
        return HFGenerateEngine(model, processor)
    if not vllm_available():
        raise PrismError(
            "rollout_engine 'vllm' was requested but vllm is not installed; install vllm (GPU only) or set "
            "rollout_engine: hf (or auto)"
        )
    if not torch.cuda.is_available():
        raise PrismError("rollout_engine 'vllm' needs a CUDA GPU; none is visible. Use rollout_engine: hf (or auto)")
    if max_model_len is None:
        raise ValueError("a vLLM engine needs max_model_len (prompt + response tokens: prism_lab.rollout.model_len)")
    from prism_lab.rollout.vllm import VLLMEngine

    return VLLMEngine.from_model(model, processor, max_model_len=max_model_len, **kwargs)
