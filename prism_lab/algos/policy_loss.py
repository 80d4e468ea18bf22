"""Clipped policy-gradient losses (PPO-clip "vanilla", GSPO, GSPO-token), to be MINIMISED.

Inputs, all ``[B, T]`` over response positions: ``logp`` = log-probs of the sampled tokens under
the current parameters (with grad), ``old_logp`` = the same under the rollout snapshot (no grad),
``advantages`` (``[B, T]``, or ``[B]`` which is broadcast over the valid tokens) and ``mask``
(1 on valid response tokens). Aggregation of the per-token loss matrix is delegated to
:mod:`prism_lab.algos.aggregation`.

Every loss returns a :class:`PolicyLossOutput`: the scalar loss, the per-token loss matrix and
detached metrics, each a mean over the valid tokens of this call:

- ``clipfrac_high``: tokens where the clipped branch is the active (strictly larger) term of the
  PPO max and the ratio is above 1 (ratio > 1 + eps_high, which requires A > 0);
- ``clipfrac_low``: same with the ratio below 1 (ratio < 1 - eps_low, which requires A < 0);
- ``clipfrac`` = low + high (verl ``pg_clipfrac``);
- ``clipfrac_dual``: tokens with A < 0 where the dual-clip bound ``-A*c`` is active (verl
  ``pg_clipfrac_lower``); always 0 for the GSPO losses;
- ``approx_kl`` = mean of ``-(logp - old_logp)`` (verl ``ppo_kl``).

Note: when ``logp == old_logp`` (first mini-batch of a rollout, or fully on-policy training) every
ratio is exactly 1, no clip is active and the gradient is the plain policy gradient
``-A * grad(logp)`` under the chosen aggregation (docs/rl_objectives.md §4).

Pure torch; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from prism_lab.algos.advantages import broadcast_to_tokens
from prism_lab.algos.aggregation import (
    aggregate,
    masked_mean,
    masked_sum,
    num_nonempty_rows,
)
from prism_lab.registry import Registry

__all__ = [
    "LOG_RATIO_CLAMP",
    "GSPO_LOG_RATIO_MAX",
    "POLICY_LOSSES",
    "ActorFields",
    "BatchTotals",
    "PolicyLossOutput",
    "PolicyLossSettings",
    "compute_policy_loss",
    "gspo_loss",
    "gspo_sequence_loss",
    "gspo_sequence_ratio",
    "gspo_token_loss",
    "vanilla_ppo_loss",
]

LOG_RATIO_CLAMP = 20.0
"""vanilla: the token log-ratio is clamped to [-20, 20] before exp (verl, EasyR1)."""

GSPO_LOG_RATIO_MAX = 10.0
"""GSPO: the (sequence) log-ratio is clamped at <= 10 before exp (verl)."""


class ActorFields(Protocol):
    """What a policy loss reads of the actor config it is given whole, as verl passes its actor config
    (:class:`prism_lab.config.algorithms.ActorConfig` has these fields and more; a new loss with a new
    hyperparameter reads its own new field there).

    ``clip_ratio_low``/``clip_ratio_high`` = eps_low/eps_high of the clip range ``[1 - eps_low, 1 + eps_high]``;
    ``clip_ratio_c`` = dual-clip constant c (> 1; vanilla only); ``loss_agg_mode`` = registered aggregation
    (``gspo`` ignores it and always uses ``seq-mean-token-mean``); ``loss_scale_factor`` goes to the aggregation.
    """

    clip_ratio_low: float
    clip_ratio_high: float
    clip_ratio_c: float
    loss_agg_mode: str
    loss_scale_factor: float | None


@dataclass(frozen=True)
class PolicyLossSettings:
    """The :class:`ActorFields` for a direct call without an actor config (tests, notebooks), checked."""

    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_ratio_low < 1.0:
            raise ValueError(f"clip_ratio_low must be in [0, 1), got {self.clip_ratio_low}")
        if self.clip_ratio_high < 0.0:
            raise ValueError(f"clip_ratio_high must be >= 0, got {self.clip_ratio_high}")
        if not self.clip_ratio_c > 1.0:
            raise ValueError(f"clip_ratio_c (dual clip) must be > 1, got {self.clip_ratio_c}")


@dataclass(frozen=True)
class BatchTotals:
    """The totals of the whole (mini-)batch a micro-batch belongs to, for the aggregation: with them the loss and
    its gradient do not depend on how the batch is cut into micro-batches (None: this call's own)."""

    global_num_tokens: float | int | Tensor | None = None
    global_num_seqs: float | int | Tensor | None = None


@dataclass(frozen=True)
class PolicyLossOutput:
    """Result of a policy loss: ``loss`` (scalar, with grad), ``loss_mat`` ``[B, T]`` and detached metrics."""

    loss: Tensor
    loss_mat: Tensor
    clipfrac: Tensor
    clipfrac_low: Tensor
    clipfrac_high: Tensor
    clipfrac_dual: Tensor
    approx_kl: Tensor
    agg_mode: str

    def metrics(self, prefix: str = "actor/") -> dict[str, float]:
        """Plain floats for logging: pg_loss, pg_clipfrac(_low/_high/_dual), ppo_kl."""
        return {
            f"{prefix}pg_loss": float(self.loss.detach()),
            f"{prefix}pg_clipfrac": float(self.clipfrac),
            f"{prefix}pg_clipfrac_low": float(self.clipfrac_low),
            f"{prefix}pg_clipfrac_high": float(self.clipfrac_high),
            f"{prefix}pg_clipfrac_dual": float(self.clipfrac_dual),
            f"{prefix}ppo_kl": float(self.approx_kl),
        }


PolicyLoss = Callable[[Tensor, Tensor, Tensor, Tensor, ActorFields, BatchTotals], PolicyLossOutput]
POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def _prepare(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    if logp.dim() != 2 or logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(
            "logp, old_logp and mask must all be [B, T]; got "
            f"{tuple(logp.shape)}, {tuple(old_logp.shape)}, {tuple(mask.shape)}"
        )
    if advantages.dim() == 1:
        advantages = broadcast_to_tokens(advantages.to(logp.dtype), mask)
    if advantages.shape != logp.shape:
        raise ValueError(f"advantages must be [B] or [B, T]; got {tuple(advantages.shape)}")
    return advantages.detach().to(logp.dtype), mask.to(logp.dtype)


def _clip_metrics(pg1: Tensor, pg2: Tensor, ratio: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    clipped = pg2 > pg1
    high = masked_mean((clipped & (ratio > 1.0)).float(), mask)
    low = masked_mean((clipped & (ratio < 1.0)).float(), mask)
    return (low + high).detach(), low.detach(), high.detach()


def _aggregate(loss_mat: Tensor, mask: Tensor, agg_mode: str, config: ActorFields, totals: BatchTotals) -> Tensor:
    return aggregate(
        loss_mat,
        mask,
        agg_mode,
        global_num_tokens=totals.global_num_tokens,
        global_num_seqs=totals.global_num_seqs,
        loss_scale_factor=config.loss_scale_factor,
    )


@POLICY_LOSSES.register("vanilla")
def vanilla_ppo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, config: ActorFields, totals: BatchTotals
) -> PolicyLossOutput:
    """PPO-clip with asymmetric clip range and dual clip (verl ``vanilla``).

    ``delta = clamp(logp - old_logp, -20, 20)``, ``r = exp(delta)``;
    ``l = max(-A*r, -A*clip(r, 1 - eps_low, 1 + eps_high))``; for ``A < 0``: ``l = min(l, -A*c)``.
    """
    adv, m = _prepare(logp, old_logp, advantages, mask)
    s = config
    log_ratio = torch.clamp(logp - old_logp, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - s.clip_ratio_low, 1.0 + s.clip_ratio_high)
    clip1 = torch.maximum(pg1, pg2)
    pg3 = -adv * s.clip_ratio_c
    clip2 = torch.minimum(pg3, clip1)
    neg = adv < 0
    loss_mat = torch.where(neg, clip2, clip1)
    clipfrac, low, high = _clip_metrics(pg1, pg2, ratio, m)
    dual = masked_mean(((clip1 > pg3) & neg).float(), m).detach()
    approx_kl = masked_mean(-log_ratio, m).detach()
    return PolicyLossOutput(
        loss=_aggregate(loss_mat, m, s.loss_agg_mode, s, totals),
        loss_mat=loss_mat,
        clipfrac=clipfrac,
        clipfrac_low=low,
        clipfrac_high=high,
        clipfrac_dual=dual,
        approx_kl=approx_kl,
        agg_mode=s.loss_agg_mode,
    )


def gspo_sequence_ratio(logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """``s_i = exp(min(mean_t over valid tokens of (logp - old_logp), 10))``, shape ``[B]`` (empty row: 1)."""
    m = mask.to(logp.dtype)
    seq_mean = masked_sum(logp - old_logp, m, dim=-1) / m.sum(dim=-1).clamp(min=1)
    return torch.exp(torch.clamp(seq_mean, max=GSPO_LOG_RATIO_MAX))


def _gspo_token_core(
    logp: Tensor, old_logp: Tensor, adv: Tensor, m: Tensor, s: ActorFields, totals: BatchTotals, agg_mode: str
) -> PolicyLossOutput:
    delta = logp - old_logp
    seq_mean = masked_sum(delta, m, dim=-1) / m.sum(dim=-1).clamp(min=1)
    # Token-level ratio s_{i,t} = sg[s_i] * pi(y_t) / sg[pi(y_t)]: value s_i, gradient per token.
    log_ratio = seq_mean.detach().unsqueeze(-1) + logp - logp.detach()
    log_ratio = torch.clamp(log_ratio, max=GSPO_LOG_RATIO_MAX)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - s.clip_ratio_low, 1.0 + s.clip_ratio_high)
    loss_mat = torch.maximum(pg1, pg2)
    clipfrac, low, high = _clip_metrics(pg1, pg2, ratio, m)
    return PolicyLossOutput(
        loss=_aggregate(loss_mat, m, agg_mode, s, totals),
        loss_mat=loss_mat,
        clipfrac=clipfrac,
        clipfrac_low=low,
        clipfrac_high=high,
        clipfrac_dual=torch.zeros((), dtype=logp.dtype, device=logp.device),
        approx_kl=masked_mean(-delta, m).detach(),
        agg_mode=agg_mode,
    )


@POLICY_LOSSES.register("gspo")
def gspo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, config: ActorFields, totals: BatchTotals
) -> PolicyLossOutput:
    """GSPO (verl ``gspo``), built GSPO-token style; aggregation FORCED to ``seq-mean-token-mean``.

    ``log s_{i,t} = min(sg[mean_t (logp - old_logp)] + logp_t - sg[logp_t], 10)``,
    ``s_{i,t} = exp(log s_{i,t})`` (numerically the sequence ratio ``s_i``),
    ``l = max(-A*s, -A*clip(s, 1 - eps_low, 1 + eps_high))``; no dual clip. ``config.loss_agg_mode``
    is ignored; ``totals.global_num_seqs`` is honoured.
    """
    adv, m = _prepare(logp, old_logp, advantages, mask)
    return _gspo_token_core(logp, old_logp, adv, m, config, totals, "seq-mean-token-mean")


@POLICY_LOSSES.register("gspo_token")
def gspo_token_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, config: ActorFields, totals: BatchTotals
) -> PolicyLossOutput:
    """GSPO-token: the per-token construction of :func:`gspo_loss` with token-level advantages.

    Same formula as ``gspo`` but ``A[i, t]`` may vary along a sequence and the configured
    ``loss_agg_mode`` is used (the GSPO paper's objective is ``seq-mean-token-mean``). With
    ``A[i, t] = A_i`` and ``seq-mean-token-mean`` it equals :func:`gspo_sequence_loss` in value and
    gradient.
    """
    adv, m = _prepare(logp, old_logp, advantages, mask)
    return _gspo_token_core(logp, old_logp, adv, m, config, totals, config.loss_agg_mode)


def gspo_sequence_loss(
    logp: Tensor,
    old_logp: Tensor,
    seq_advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    global_num_seqs: float | int | Tensor | None = None,
) -> Tensor:
    """Reference sequence-level GSPO objective (to minimise):

    ``(1/S) sum_i max(-A_i * s_i, -A_i * clip(s_i, 1 - eps_low, 1 + eps_high))`` with ``s_i`` from
    :func:`gspo_sequence_ratio` and ``S`` the number of non-empty sequences (or ``global_num_seqs``).
    Empty sequences are left out. Used to check the token construction; trainers use ``gspo``.
    """
    if seq_advantages.dim() != 1:
        raise ValueError(f"seq_advantages must be [B], got {tuple(seq_advantages.shape)}")
    adv = seq_advantages.detach().to(logp.dtype)
    s_i = gspo_sequence_ratio(logp, old_logp, mask)
    per_seq = torch.maximum(-adv * s_i, -adv * torch.clamp(s_i, 1.0 - clip_low, 1.0 + clip_high))
    nonempty = mask.to(torch.bool).any(dim=-1)
    per_seq = torch.where(nonempty, per_seq, torch.zeros_like(per_seq))
    n = num_nonempty_rows(mask) if global_num_seqs is None else global_num_seqs
    return per_seq.sum() / torch.as_tensor(n, dtype=logp.dtype, device=logp.device).clamp(min=1)


def compute_policy_loss(
    name: str,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    config: ActorFields | None = None,
    *,
    global_num_tokens: float | int | Tensor | None = None,
    global_num_seqs: float | int | Tensor | None = None,
    **fields: float | str | None,
) -> PolicyLossOutput:
    """Run the registered policy loss ``name`` ("vanilla", "gspo", "gspo_token") and aggregate it.

    ``config``: the actor config, passed whole to the loss (the trainers pass theirs). Without one, ``fields``
    (``clip_ratio_low``, ``clip_ratio_high``, ``clip_ratio_c``, ``loss_agg_mode``, ``loss_scale_factor``) make a
    checked :class:`PolicyLossSettings`. ``global_num_tokens``/``global_num_seqs``: the batch totals
    (:class:`BatchTotals`)."""
    if config is None:
        config = PolicyLossSettings(**fields)  # type: ignore[arg-type]
    elif fields:
        raise TypeError(f"compute_policy_loss: give the settings in config or as fields, not both ({sorted(fields)})")
    totals = BatchTotals(global_num_tokens=global_num_tokens, global_num_seqs=global_num_seqs)
    return POLICY_LOSSES.get(name)(logp, old_logp, advantages, mask, config, totals)
