"""The one precision policy of every trainer: a config's ``precision`` field -> "bf16" or "no", and its autocast.

Every stage config that trains has a ``precision`` field (``auto``, ``fp32`` or ``bf16``). :func:`resolve_precision`
turns it into the mixed-precision mode of the run, the same way for every stage:

* ``fp32`` -> "no";
* ``auto`` -> "bf16" only on a CUDA device that supports bfloat16, else "no" (so "no" on CPU);
* ``bf16`` -> "bf16" on CPU (autocast; usually slower there) and on a CUDA device with bfloat16; a CUDA device
  without it is a ConfigError.

A single-process run applies the mode as ``torch.autocast`` around its forward passes (:func:`autocast_for`), with
the parameters (and AdamW state) kept in float32. A sharded run hands it to FSDP2's ``MixedPrecisionPolicy``
(``resources.param_dtype: auto`` follows it; see :class:`~prism_lab.trainers.distributed.ShardedAccelerator`),
and autocast is then a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from prism_lab.errors import ConfigError

__all__ = ["autocast_for", "resolve_export_dtype", "resolve_precision"]


def resolve_precision(precision: str, device_type: str) -> str:
    """The run's mixed-precision mode for ``precision`` on a ``device_type`` ("cuda" or "cpu"): "bf16" or "no"."""
    if precision == "fp32":
        return "no"
    cuda_bf16 = device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if cuda_bf16 else "no"
    if precision == "bf16":
        if device_type == "cuda" and not cuda_bf16:
            raise ConfigError("precision: bf16 but this GPU does not support bfloat16; use fp32 or auto")
        return "bf16"
    raise ConfigError(f"precision must be auto, fp32 or bf16, got {precision!r}")


def autocast_for(mode: str, model: Any) -> tuple[Callable[[], Any], bool]:
    """(context factory, computes in bf16) for ``model`` in mixed-precision ``mode``.

    "bf16" on float32 parameters: ``torch.autocast`` to bfloat16 on the parameters' device. Parameters that are
    already bfloat16 compute in it without autocast; "no": no autocast."""
    param = next(model.parameters())
    param_bf16 = param.dtype == torch.bfloat16
    if mode == "bf16" and not param_bf16:
        device_type = param.device.type
        return (lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16)), True
    return contextlib.nullcontext, param_bf16


def resolve_export_dtype(export_dtype: str, device_type: str) -> torch.dtype:
    """The dtype of a stage's exported policy weights (``resources.export_dtype``) for a run on ``device_type``:
    ``fp32`` / ``bf16`` as named; ``auto`` = bf16 when the run trains on CUDA, fp32 otherwise (CPU runs keep
    their fp32 checkpoints)."""
    if export_dtype == "fp32":
        return torch.float32
    if export_dtype == "bf16":
        return torch.bfloat16
    if export_dtype == "auto":
        return torch.bfloat16 if device_type == "cuda" else torch.float32
    raise ConfigError(f"export_dtype must be auto, fp32 or bf16, got {export_dtype!r}")
