"""Gradient clipping, the one copy every trainer uses (sharded or not).

:func:`clip_gradients` clips the global gradient norm of ``params`` to ``max_norm`` in place and returns the norm
before clipping as a Python float (``inf``/``nan`` when a gradient is not finite: the trainers then skip the
optimizer step). Under FSDP2 the norm is a DTensor; its full value is taken, so every rank sees the same number.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from prism_lab.trainers.distributed import local_tensor

__all__ = ["clip_gradients"]


def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Clip the global L2 norm of the gradients of ``params`` to ``max_norm``; returns the norm before clipping."""
    return float(local_tensor(torch.nn.utils.clip_grad_norm_(list(params), max_norm)))
