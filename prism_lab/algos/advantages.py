"""Outcome advantage estimators for group-sampled RL (GRPO family).

Every response ``i`` of a prompt shares that prompt's group id (verl's per-prompt ``uid``). Ids
are arbitrary hashables (strings, ints, tuples) and samples of one group may appear anywhere in
the batch, in any order.

GRPO (verl ``compute_grpo_outcome_advantage``)::

    A_i = (R_i - mean_g(R)) / (std_g(R) + eps)        # norm_by_std=True  ("grpo")
    A_i =  R_i - mean_g(R)                            # norm_by_std=False ("dr_grpo", Dr.GRPO)

with ``std_g`` the UNBIASED (Bessel, ddof=1) standard deviation of the rewards of group ``g`` and
``eps = 1e-6``. A group with a single sample gets ``mean = 0`` and ``std = 1`` (verl's
convention), so its advantage is ``R_i / (1 + eps)`` with std normalisation and ``R_i`` without.

Statistics are computed in float64 and the result is cast back to the reward dtype (float32 for
integer/bool rewards): with float32 the mean of identical non-dyadic rewards (e.g. 0.1) can miss
the rewards by one ulp, and dividing that by ``std + 1e-6`` would give spurious advantages.

Pure torch; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from prism_lab.registry import Registry

__all__ = [
    "ADV_ESTIMATORS",
    "AdvantageEstimator",
    "GroupIds",
    "broadcast_to_tokens",
    "compute_advantage",
    "dr_grpo_advantage",
    "group_index",
    "group_normalize",
    "grpo_advantage",
]

GroupIds = Sequence[Hashable] | Tensor


class AdvantageEstimator(Protocol):
    """Signature shared by every registered estimator: per-sample rewards -> per-sample advantages."""

    def __call__(
        self, rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6, norm_by_std: bool = True
    ) -> Tensor: ...


ADV_ESTIMATORS: Registry[Callable[..., Tensor]] = Registry("advantage estimator")


def group_index(group_ids: GroupIds, n: int | None = None) -> tuple[Tensor, list[Hashable]]:
    """Map arbitrary hashable ids to dense indices ``0..G-1`` in order of first appearance.

    Returns ``(index[B] as int64, unique_ids)``. Tensor ids are read with ``.tolist()``.
    """
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    if n is not None and len(ids) != n:
        raise ValueError(f"got {len(ids)} group ids for {n} samples")
    lookup: dict[Hashable, int] = {}
    index = [lookup.setdefault(g, len(lookup)) for g in ids]
    return torch.tensor(index, dtype=torch.long), list(lookup)


def group_normalize(
    values: Tensor, group_ids: GroupIds, *, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """``(v_i - mean_g v) / (std_g v + eps)`` (or ``v_i - mean_g v``), unbiased std, size-1 groups mean 0 std 1.

    The building block of every GRPO-style estimator (also of multi-reward variants that normalise
    each reward channel separately). ``values`` is 1-D; the result has the same shape.
    """
    if values.dim() != 1:
        raise ValueError(f"expected a 1-D tensor of per-sample values, got shape {tuple(values.shape)}")
    out_dtype = values.dtype if values.is_floating_point() else torch.float32
    b = values.shape[0]
    if b == 0:
        return values.to(out_dtype)
    idx, uniq = group_index(group_ids, b)
    return group_normalize_indexed(values, idx.to(values.device), len(uniq), eps=eps, norm_by_std=norm_by_std)


def group_normalize_indexed(
    values: Tensor, idx: Tensor, n_groups: int, *, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """:func:`group_normalize` with the groups given as dense indices ``0..n_groups-1`` (no gradient)."""
    out_dtype = values.dtype if values.is_floating_point() else torch.float32
    v = values.detach().reshape(-1).to(torch.float64)
    g = n_groups
    count = torch.zeros(g, dtype=torch.float64, device=v.device).index_add_(0, idx, torch.ones_like(v))
    total = torch.zeros(g, dtype=torch.float64, device=v.device).index_add_(0, idx, v)
    mean = total / count.clamp(min=1)
    sq = torch.zeros(g, dtype=torch.float64, device=v.device).index_add_(0, idx, (v - mean[idx]) ** 2)
    single = count <= 1
    var = sq / (count - 1).clamp(min=1)
    std = var.sqrt()
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    centred = v - mean[idx]
    if norm_by_std:
        centred = centred / (std[idx] + eps)
    return centred.to(out_dtype)


@ADV_ESTIMATORS.register("grpo")
def grpo_advantage(
    rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """GRPO outcome advantage ``A_i = (R_i - mean_g R) / (std_g R + eps)`` (unbiased std).

    ``norm_by_std=False`` drops the division (verl ``norm_adv_by_std_in_grpo=False``, = Dr.GRPO).
    Single-sample groups: mean 0, std 1, so ``A_i = R_i / (1 + eps)`` (``R_i`` without std).
    Advantages carry no gradient.
    """
    return group_normalize(rewards, group_ids, eps=eps, norm_by_std=norm_by_std)


@ADV_ESTIMATORS.register("dr_grpo")
def dr_grpo_advantage(
    rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6, norm_by_std: bool = False
) -> Tensor:
    """Dr.GRPO advantage ``A_i = R_i - mean_g R`` (no std division; single-sample groups: ``A_i = R_i``).

    ``eps`` is unused; ``norm_by_std`` must stay False (it exists only so every estimator has the
    same signature).
    """
    if norm_by_std:
        raise ValueError("dr_grpo never divides by the group std; use adv estimator 'grpo' for that")
    return group_normalize(rewards, group_ids, eps=eps, norm_by_std=False)


def compute_advantage(
    name: str, rewards: Tensor, group_ids: GroupIds, *, eps: float = 1e-6, norm_by_std: bool = True
) -> Tensor:
    """Run the registered estimator ``name``; for ``dr_grpo`` the ``norm_by_std`` flag is ignored."""
    fn = ADV_ESTIMATORS.get(name)
    if name == "dr_grpo":
        return fn(rewards, group_ids, eps=eps)
    return fn(rewards, group_ids, eps=eps, norm_by_std=norm_by_std)


def broadcast_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """``A[i, t] = A_i * m[i, t]``: per-sample advantages ``[B]`` spread over valid tokens ``[B, T]``."""
    if advantages.dim() != 1 or mask.dim() != 2 or advantages.shape[0] != mask.shape[0]:
        raise ValueError(
            f"expected advantages [B] and mask [B, T], got {tuple(advantages.shape)} and {tuple(mask.shape)}"
        )
    return advantages.unsqueeze(-1) * mask.to(advantages.dtype)
