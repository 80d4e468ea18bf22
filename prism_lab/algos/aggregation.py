"""Loss aggregation: turn a per-token loss matrix into one scalar (verl ``loss_agg_mode``).

Notation: ``M[i, t]`` is the per-token loss, ``m[i, t]`` in {0, 1} the mask of valid response
tokens, ``n_i = sum_t m[i, t]`` the number of valid tokens of sequence ``i``. A sequence with
``n_i = 0`` ("empty row") never produces NaN: it adds nothing to any sum and is left out of every
count of sequences.

Micro-batching contract. A trainer that splits one optimiser mini-batch into micro-batches and
accumulates gradients passes the mini-batch totals (``global_num_tokens`` for ``token-mean``,
``global_num_seqs`` for the ``seq-mean-*`` modes). Then every mode is a plain sum over
micro-batches: the sum of the micro-batch losses equals the loss of the whole mini-batch, and so
do the gradients. ``seq-mean-token-sum-norm`` divides by a constant and needs no override.

Pure torch; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

from prism_lab.registry import Registry

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "aggregate",
    "masked_mean",
    "masked_sum",
    "num_nonempty_rows",
    "token_mean",
    "seq_mean_token_sum",
    "seq_mean_token_mean",
    "seq_mean_token_sum_norm",
]


class Aggregation(Protocol):
    """Signature shared by every registered aggregation."""

    def __call__(
        self,
        loss_mat: Tensor,
        mask: Tensor,
        *,
        global_num_tokens: float | int | Tensor | None = None,
        global_num_seqs: float | int | Tensor | None = None,
        loss_scale_factor: float | None = None,
    ) -> Tensor: ...


AGGREGATIONS: Registry[Callable[..., Tensor]] = Registry("loss aggregation")


def _check(loss_mat: Tensor, mask: Tensor) -> Tensor:
    if loss_mat.shape != mask.shape:
        raise ValueError(f"loss matrix shape {tuple(loss_mat.shape)} != mask shape {tuple(mask.shape)}")
    if loss_mat.dim() != 2:
        raise ValueError(f"expected [batch, tokens] tensors, got {loss_mat.dim()} dims")
    return mask.to(loss_mat.dtype)


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``sum(values * mask)`` over ``dim`` (all dims when None); masked-out entries never leak NaN/Inf."""
    m = mask.to(torch.bool)
    zeros = torch.zeros((), dtype=values.dtype, device=values.device)
    picked = torch.where(m, values, zeros)
    return picked.sum() if dim is None else picked.sum(dim=dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """``sum(values * mask) / sum(mask)`` over ``dim`` (all dims when None).

    A slice with no valid entry gives 0 (not NaN): the denominator is clamped at 1 and the
    numerator is then 0. Entries under a zero mask are ignored even if they are NaN or Inf.
    """
    if not values.is_floating_point():
        values = values.float()
    m = mask.to(values.dtype)
    num = masked_sum(values, mask, dim)
    den = m.sum() if dim is None else m.sum(dim=dim)
    return num / den.clamp(min=1)


def num_nonempty_rows(mask: Tensor) -> Tensor:
    """Number of sequences (rows) with at least one valid token."""
    return (mask.to(torch.bool).any(dim=-1)).sum()


def _as_count(value: float | int | Tensor, like: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.clamp(min=1)


@AGGREGATIONS.register("token-mean")
def token_mean(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_num_tokens: float | int | Tensor | None = None,
    global_num_seqs: float | int | Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """``sum_{i,t} M*m / N`` with ``N = global_num_tokens`` if given, else ``sum_{i,t} m``.

    Passing the valid-token count of the whole optimiser mini-batch as ``global_num_tokens`` makes
    the loss a true global token mean, invariant to how the mini-batch is cut into micro-batches
    (DAPO "token-level loss"; verl's default). ``N`` is clamped at 1, so an all-empty batch gives 0.
    """
    m = _check(loss_mat, mask)
    total = masked_sum(loss_mat, m)
    n = m.sum() if global_num_tokens is None else global_num_tokens
    return total / _as_count(n, loss_mat)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_num_tokens: float | int | Tensor | None = None,
    global_num_seqs: float | int | Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """``(1/S) sum_i sum_t M*m``, ``S`` = number of non-empty sequences (or ``global_num_seqs``)."""
    m = _check(loss_mat, mask)
    seq = masked_sum(loss_mat, m, dim=-1)
    s = num_nonempty_rows(m) if global_num_seqs is None else global_num_seqs
    return seq.sum() / _as_count(s, loss_mat)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_num_tokens: float | int | Tensor | None = None,
    global_num_seqs: float | int | Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """``(1/S) sum_i [ (1/n_i) sum_t M*m ]`` over non-empty sequences (original GRPO / GSPO form).

    ``S`` = number of non-empty sequences, or ``global_num_seqs``. Empty rows contribute 0 and are
    not counted in ``S``.
    """
    m = _check(loss_mat, mask)
    seq = masked_sum(loss_mat, m, dim=-1) / m.sum(dim=-1).clamp(min=1)
    s = num_nonempty_rows(m) if global_num_seqs is None else global_num_seqs
    return seq.sum() / _as_count(s, loss_mat)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    loss_mat: Tensor,
    mask: Tensor,
    *,
    global_num_tokens: float | int | Tensor | None = None,
    global_num_seqs: float | int | Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """``sum_{i,t} M*m / C`` with a constant ``C = loss_scale_factor`` (default: padded length T).

    Dr.GRPO's length-unbiased form (verl). ``C`` should be a constant of the run, e.g. the maximum
    response length; the default (the padded length of this batch) matches verl but varies with
    the batch. For TRL's ``dr_grpo`` scale use ``C = batch_size * max_completion_length``.
    """
    m = _check(loss_mat, mask)
    c = float(loss_mat.shape[-1]) if loss_scale_factor is None else float(loss_scale_factor)
    if c <= 0:
        raise ValueError(f"loss_scale_factor must be > 0, got {c}")
    return masked_sum(loss_mat, m) / c


def aggregate(
    loss_mat: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    *,
    global_num_tokens: float | int | Tensor | None = None,
    global_num_seqs: float | int | Tensor | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """Aggregate ``loss_mat`` with the registered mode ``mode`` (see the module docstring)."""
    fn = AGGREGATIONS.get(mode)
    return fn(
        loss_mat,
        mask,
        global_num_tokens=global_num_tokens,
        global_num_seqs=global_num_seqs,
        loss_scale_factor=loss_scale_factor,
    )
