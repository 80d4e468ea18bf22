"""Token entropy of the policy's next-token distribution (for logging and the entropy bonus).

``H[b, t] = logsumexp_v(z) - sum_v softmax(z)_v * z_v`` for logits ``z = logits[b, t, :]``, which
equals ``-sum_v p_v log p_v`` and is stable for large logits (no explicit ``log p``).

Pure torch; no I/O.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prism_lab.algos.aggregation import masked_mean

__all__ = ["entropy_from_logits", "masked_mean"]


def _entropy(logits: Tensor) -> Tensor:
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    lse = torch.logsumexp(z, dim=-1)
    p = torch.softmax(z, dim=-1)
    return lse - (p * z).sum(dim=-1)


def entropy_from_logits(logits: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """Entropy ``[B, T]`` of ``softmax(logits[B, T, V])`` along the last dim.

    ``chunk_size`` bounds peak memory by processing that many positions of T at a time (the
    softmax of a chunk is freed before the next); the result is identical. Half-precision
    logits are upcast to float32; the result has the computation dtype.
    """
    if logits.dim() < 1:
        raise ValueError("logits must have a vocabulary dimension")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    if chunk_size is None or logits.dim() < 3 or logits.shape[-2] <= chunk_size:
        return _entropy(logits)
    parts = [_entropy(c) for c in torch.split(logits, chunk_size, dim=-2)]
    return torch.cat(parts, dim=-1)
