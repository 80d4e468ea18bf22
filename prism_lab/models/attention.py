"""Device, dtype and attention-kernel choice: one place shared by every stage."""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch

from prism_lab.errors import ConfigError


def _flash_attn_importable() -> bool:
    try:
        return importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):
        return False


def pick_device() -> str:
    """"cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_type(device: str | torch.device | None) -> str:
    if device is None:
        return pick_device()
    return torch.device(device).type


def choose_attn_implementation(device: str | torch.device | None = None) -> str:
    """"flash_attention_2" when flash_attn is installed, CUDA is available and ``device`` is CUDA
    (default: the device ``pick_device`` picks); "sdpa" otherwise."""
    if _device_type(device) == "cuda" and torch.cuda.is_available() and _flash_attn_importable():
        return "flash_attention_2"
    return "sdpa"


def pick_dtype(device: str | torch.device | None = None, bf16: bool | Literal["auto"] = "auto") -> torch.dtype:
    """Parameter dtype for ``device``.

    "auto": bfloat16 on a CUDA device that supports it, float32 otherwise (CPU stays float32).
    True: bfloat16, or ``ConfigError`` where the device cannot do it. False: float32.
    """
    dev = _device_type(device)
    if bf16 == "auto":
        if dev == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if bf16 is True:
        if dev == "cuda":
            if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
                raise ConfigError("bf16=True but this CUDA device does not support bfloat16; set bf16: false")
            return torch.bfloat16
        if dev == "cpu":
            return torch.bfloat16  # torch supports bf16 on CPU; it is only used when asked for explicitly
        raise ConfigError(f"bf16=True is not supported on device {dev!r}")
    if bf16 is False:
        return torch.float32
    raise ConfigError(f"bf16 must be true, false or 'auto', got {bf16!r}")
