"""Per-token KL estimators between the current policy and a frozen reference (verl ``kl_penalty``).

Inputs are per-token log-probs of the SAMPLED tokens: ``logp`` (current policy, with grad) and
``ref_logp`` (reference, no grad), both ``[B, T]``. Outputs are ``[B, T]`` matrices, to be
aggregated with the same ``loss_agg_mode`` as the policy loss and added as ``coef * KL``.

Estimators (d = logp - ref_logp):
- ``k1`` / ``kl``: ``d``.
- ``abs``: ``|d|``.
- ``k2`` / ``mse``: ``0.5 * d**2``.
- ``k3`` / ``low_var_kl``: with ``u = clamp(ref_logp - logp, -20, 20)``,
  ``clamp(exp(u) - u - 1, -10, 10)`` (>= 0, unbiased for KL(pi || ref) under samples of pi).
- ``k3+`` / ``low_var_kl+``: straight-through; forward value of ``k3`` and gradient of ``k2``
  (``d``), i.e. ``k2 - sg[k2] + sg[k3]`` (an unbiased estimate of the KL gradient).

Pure torch; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from prism_lab.registry import Registry

__all__ = ["KL_ESTIMATORS", "kl_penalty", "kl_k1", "kl_abs", "kl_k2", "kl_k3", "kl_k3_plus"]

KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")


def _check(logp: Tensor, ref_logp: Tensor) -> None:
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp shape {tuple(logp.shape)} != ref_logp shape {tuple(ref_logp.shape)}")


@KL_ESTIMATORS.register("k1")
@KL_ESTIMATORS.register("kl")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1: ``logp - ref_logp`` (unbiased, high variance, can be negative)."""
    _check(logp, ref_logp)
    return logp - ref_logp


@KL_ESTIMATORS.register("abs")
def kl_abs(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """``|logp - ref_logp|``."""
    _check(logp, ref_logp)
    return (logp - ref_logp).abs()


@KL_ESTIMATORS.register("k2")
@KL_ESTIMATORS.register("mse")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2: ``0.5 * (logp - ref_logp)**2``; its gradient w.r.t. logp is ``logp - ref_logp``."""
    _check(logp, ref_logp)
    return 0.5 * (logp - ref_logp).square()


@KL_ESTIMATORS.register("k3")
@KL_ESTIMATORS.register("low_var_kl")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 (low-variance KL): ``u = clamp(ref - logp, -20, 20)``; ``clamp(exp(u) - u - 1, -10, 10)``."""
    _check(logp, ref_logp)
    u = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(u) - u - 1.0, min=-10.0, max=10.0)


@KL_ESTIMATORS.register("k3+")
@KL_ESTIMATORS.register("low_var_kl+")
def kl_k3_plus(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Straight-through k3: value of :func:`kl_k3`, gradient of :func:`kl_k2`: ``k2 - sg[k2] + sg[k3]``."""
    k2 = kl_k2(logp, ref_logp)
    k3 = kl_k3(logp, ref_logp)
    return k2 - k2.detach() + k3.detach()


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "low_var_kl") -> Tensor:
    """Per-token KL matrix ``[B, T]`` with the registered estimator ``kind`` (see module docstring)."""
    return KL_ESTIMATORS.get(kind)(logp, ref_logp)
