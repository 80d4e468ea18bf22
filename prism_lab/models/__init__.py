"""Qwen3-VL models for prism-lab: tiny random-init presets for CPU runs and offline checkpoint loading.

Names are imported lazily, so light users (grid validation asks only for PRESETS) do not pay for
torch and transformers. Importing prism_lab.models.processor (or anything that loads a model)
registers ``TinyQwen3VLProcessor`` with ``AutoProcessor``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "choose_attn_implementation": "attention", "pick_device": "attention", "pick_dtype": "attention",
    "build_tiny_policy": "loader", "count_parameters": "loader", "load_policy": "loader",
    "resolve_checkpoint_dir": "loader", "save_policy": "loader", "tiny_config": "loader",
    "PRESETS": "presets", "ModelPreset": "presets", "ModelRef": "presets", "mrope_section_for": "presets",
    "resolve_model_ref": "presets",
    "TinyQwen3VLProcessor": "processor", "build_image_processor": "processor", "build_processor": "processor",
    "load_processor": "processor",
    "FORMAT_TAGS": "tokenizer", "SPECIAL_TOKENS": "tokenizer", "build_tokenizer": "tokenizer",
    "special_token_ids": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prism_lab.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"prism_lab.models.{module}"), name)
    globals()[name] = value
    return value
