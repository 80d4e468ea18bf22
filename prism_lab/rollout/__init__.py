"""Rollout engines: sample ``n`` completions per multimodal prompt, with optional log-probs.

``types`` holds the contract every engine keeps, ``inputs`` turns prompts into model inputs, ``hf`` is
the default engine and ``vllm`` the optional GPU one; :func:`make_engine` picks one. The training stages'
colocated engines (``vllm``, ``hf_colocated``) are built by :func:`prism_lab.rollout.colocate.make_training_engine`.
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
    "ENGINE_KINDS",
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
    "vllm_available",
]


def vllm_available() -> bool:
    """True when the vllm package is importable (says nothing about a GPU)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


#: The rollout engines a config may name (``hf_colocated``: the training stages' colocated path with a
#: transformers copy per rank, :mod:`prism_lab.rollout.hf_colocated`).
ENGINE_KINDS = ("auto", "hf", "vllm", "hf_colocated")


def resolve_engine_kind(kind: str = "auto") -> str:
    """The engine ``kind`` names: ``hf``, ``vllm`` or ``hf_colocated`` (``auto``: vLLM when it is installed AND a
    GPU is present, else HF); loads no model (the evaluation fingerprint names the engine of a cached result)."""
    if kind not in ENGINE_KINDS:
        raise ConfigError(f"unknown rollout engine {kind!r}; expected one of {', '.join(ENGINE_KINDS)}")
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
    if kind == "hf_colocated":
        raise PrismError("rollout_engine 'hf_colocated' is the RL and alignment stages' colocated engine (fed from the "
                         "policy they train: prism_lab.rollout.colocate.make_training_engine); use hf here")
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
