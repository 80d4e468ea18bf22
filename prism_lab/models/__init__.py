"""Qwen3-VL models for prism-lab: tiny random-init presets for CPU runs and offline checkpoint loading.

Importing this package registers ``TinyQwen3VLProcessor`` with ``AutoProcessor``.
"""

from prism_lab.models.attention import choose_attn_implementation, pick_device, pick_dtype
from prism_lab.models.loader import (
    build_tiny_policy,
    count_parameters,
    load_policy,
    resolve_checkpoint_dir,
    save_policy,
    tiny_config,
)
from prism_lab.models.presets import PRESETS, ModelPreset, ModelRef, mrope_section_for, resolve_model_ref
from prism_lab.models.processor import TinyQwen3VLProcessor, build_image_processor, build_processor, load_processor
from prism_lab.models.tokenizer import FORMAT_TAGS, SPECIAL_TOKENS, build_tokenizer, special_token_ids

__all__ = [
    "FORMAT_TAGS",
    "PRESETS",
    "SPECIAL_TOKENS",
    "ModelPreset",
    "ModelRef",
    "TinyQwen3VLProcessor",
    "build_image_processor",
    "build_processor",
    "build_tiny_policy",
    "build_tokenizer",
    "choose_attn_implementation",
    "count_parameters",
    "load_policy",
    "load_processor",
    "mrope_section_for",
    "pick_device",
    "pick_dtype",
    "resolve_checkpoint_dir",
    "resolve_model_ref",
    "save_policy",
    "special_token_ids",
    "tiny_config",
]
