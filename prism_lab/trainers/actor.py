"""The policy update shared by the alignment (stage 2) and RL (stage 3) trainers: one copy of each part.

* :func:`micro_batches` cuts a batch of (prompt row, completion) pairs into mini-batches of
  micro-batches of :class:`~prism_lab.trainers.logprobs.SequenceBatch`;
* :func:`recompute_logprobs` is the one no-grad log-prob pass (PPO's ``old_logp`` when the rollout's
  own log-probs cannot be used, and the reference policy's log-probs for the KL loss);
* :func:`ppo_update` is the one PPO-clip actor update: per mini-batch one optimizer step, micro-batches
  with gradient accumulation, the aggregation given the mini-batch totals (tokens / sequences), so the
  loss and its gradient do not depend on the micro-batch cut (verl ``dp_actor.update_policy``, v0.5).
  Entropy bonus and KL-to-reference terms are added only when their coefficients are > 0.

On-policy updates (one mini-batch, one epoch) may take the rollout engine's log-probs as ``old_logp``:
each micro-batch compares them with its own forward, and where they differ by more than
``logprob_tolerance`` the forward's detached values are used instead (that is the recomputation, at
no extra cost; ``rollout/logprob_fallback`` counts it).

Metric names (one set, for every trainer): ``actor/pg_loss``, ``actor/loss`` (means over optimizer
steps), ``actor/pg_clipfrac*``, ``actor/ppo_kl``, ``actor/entropy``, ``actor/kl_loss`` (token-weighted
means), ``actor/grad_norm`` (mean over the optimizer steps whose norm was finite), ``actor/num_updates``
and ``actor/skipped_updates`` (a non-finite gradient norm skips the optimizer step).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from prism_lab.algos.aggregation import aggregate, masked_mean
from prism_lab.algos.kl import kl_penalty
from prism_lab.algos.policy_loss import compute_policy_loss
from prism_lab.config.algorithms import ActorConfig
from prism_lab.data.token_budget import over_budget, token_budget_groups
from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.optim import clip_gradients
from prism_lab.trainers.logprobs import (
    SequenceBatch,
    completion_logprobs,
    make_sequence_batch,
)

__all__ = ["MicroBatch", "micro_batches", "pad_rows", "ppo_update", "recompute_logprobs"]

#: Log-prob metrics that are shares of a mini-batch mean: summed over its micro-batches.
_SUMMED = ("actor/pg_loss", "actor/loss")

log_ = logging.getLogger(__name__)
_warned_over_budget = False

#: ``(rows, batch)``: the sample indices a micro-batch holds and its model inputs.
MicroBatch = tuple[list[int], SequenceBatch]


def _sum(value: float, env: Any) -> float:
    return dist_.all_reduce_sum(value, env) if env is not None else float(value)


def pad_rows(rows: Sequence[Sequence[float] | Tensor], width: int) -> Tensor:
    """``[len(rows), width]`` float32, row ``i`` = ``rows[i]`` truncated or zero-padded to ``width``."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        r = r if isinstance(r, Tensor) else torch.as_tensor(list(r), dtype=torch.float32)
        n = min(int(r.shape[0]), width)
        if n:
            out[i, :n] = r[:n]
    return out


def micro_batches(prompt_batch: dict, prompt_rows: Sequence[int], completions: Sequence[Sequence[int]],
                  rows: Sequence[int], *, size: int, pad_token_id: int, image_chunks: Any,
                  device: torch.device | str, env: Any = None, max_tokens: int | None = None) -> list[MicroBatch]:
    """Micro-batches of the samples ``rows`` (sample ``i`` continues prompt row ``prompt_rows[i]`` of
    ``prompt_batch`` with ``completions[i]``), on ``device``: at most ``size`` samples each, or, with
    ``max_tokens``, runs of samples whose prompt + response tokens (unpadded) fit the budget
    (:func:`~prism_lab.data.token_budget.token_budget_groups`; ``size`` is then unused).

    Sharded (``env.sharded``): this rank's share of ``rows`` only, padded to the same number of
    micro-batches on every rank with ``([], batch)`` entries: every rank must run as many forward and
    backward passes as the others (FSDP gathers parameters in each); a padding pass adds no gradient.
    With a token budget the ranks' counts differ, so the largest is taken over ranks (verl does the same)."""
    def batch(r: list[int]) -> SequenceBatch:
        return make_sequence_batch(prompt_batch, [prompt_rows[i] for i in r], [completions[i] for i in r],
                                   pad_token_id=pad_token_id, image_chunks=image_chunks).to(device)

    mine = list(rows) if env is None or not env.sharded else dist_.shard_slice(list(rows), env)
    if max_tokens is None:
        groups = [mine[s:s + size] for s in range(0, len(mine), size)]
    else:
        groups = _token_groups(prompt_batch, prompt_rows, completions, mine, max_tokens)
    out = [(g, batch(g)) for g in groups]
    if env is not None and env.sharded and rows:
        n_micro = (math.ceil(math.ceil(len(rows) / env.world_size) / size) if max_tokens is None
                   else int(dist_.all_reduce_max(len(out), env)))
        out += [([], batch([rows[0]])) for _ in range(n_micro - len(out))]
    return out


def _token_groups(prompt_batch: dict, prompt_rows: Sequence[int], completions: Sequence[Sequence[int]],
                  mine: list[int], max_tokens: int) -> list[list[int]]:
    """``mine`` grouped by the token budget; warns (once per process) when a sample alone exceeds it."""
    global _warned_over_budget
    mask = prompt_batch["attention_mask"]
    lengths = [int(mask[prompt_rows[i]].sum()) + len(completions[i]) for i in mine]
    long = over_budget(lengths, max_tokens)
    if long and not _warned_over_budget:
        _warned_over_budget = True
        log_.warning("max_tokens_per_micro_batch=%d: %d sample(s) of up to %d tokens exceed it; each runs as a "
                     "micro-batch of its own (warned once)", max_tokens, len(long), max(lengths[j] for j in long))
    return [[mine[j] for j in g] for g in token_budget_groups(lengths, max_tokens)]


@torch.no_grad()
def recompute_logprobs(model: Any, batches: Sequence[MicroBatch], lengths: Sequence[int], *, temperature: float,
                       suppress_token_ids: Sequence[int],
                       autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[int, Tensor]:
    """Sample index -> its completion log-probs ``[len]`` (CPU, float32) under ``model``, eval mode, no grad."""
    was = model.training
    model.eval()
    out: dict[int, Tensor] = {}
    try:
        for rows, b in batches:
            with autocast():
                lp, _ = completion_logprobs(model, b, temperature=temperature, suppress_token_ids=suppress_token_ids)
            lp = lp.float().detach()
            for j, i in enumerate(rows):
                out[i] = lp[j, : lengths[i]].cpu()
    finally:
        model.train(was)
    return out


def _constant_scale(s: ActorConfig, micro: Sequence[MicroBatch], env: Any) -> ActorConfig:
    """``s`` with the ``seq-mean-token-sum-norm`` divisor fixed for the whole mini-batch when the config leaves it
    to the batch (None = the padded response length): the mini-batch's widest response over every rank, not each
    micro-batch's own width, so the loss does not depend on how the rows are grouped into micro-batches."""
    if s.loss_scale_factor is not None or s.loss_agg_mode != "seq-mean-token-sum-norm":
        return s
    width = max((int(b.response_mask.shape[1]) for r, b in micro if r), default=1)
    width = dist_.all_reduce_max(width, env) if env is not None else width
    return s.model_copy(update={"loss_scale_factor": float(width)})


def ppo_update(model: Any, optimizer: torch.optim.Optimizer, mini: Sequence[Sequence[MicroBatch]],
               old: dict[int, Tensor], advantages: Sequence[float], s: ActorConfig, *, temperature: float,
               suppress_token_ids: Sequence[int], logprob_tolerance: float = 1e-3,
               ref: dict[int, Tensor] | None = None, old_from_rollout: bool = False,
               autocast: Callable[[], Any] = contextlib.nullcontext, env: Any = None,
               backward: Callable[[Tensor], None] | None = None) -> dict[str, float]:
    """``s.ppo_epochs`` passes over the mini-batches ``mini``, one optimizer step each; returns the metrics.

    ``s``: the actor config (RL's AlgorithmConfig, or ``AlignConfig.actor()``), passed whole to the registered
    policy loss ``s.policy_loss``; ``temperature``: the rollout temperature of the log-probs.

    ``old`` / ``ref``: sample index -> old / reference log-probs. ``old_from_rollout``: ``old`` came from the
    rollout engine (checked against each forward, see the module docstring). Sharded runs (``env``, with the
    micro-batches of :func:`micro_batches`): the token and sequence totals are summed over ranks, ``backward``
    is the sharded one, and the metrics cover every rank's samples."""
    backward = backward or (lambda loss: loss.backward())
    # The optimizer's parameters, not ``model.parameters()``: after a no-grad forward (rollout, old log-probs)
    # an FSDP2 root keeps its unsharded parameters registered on the module until the next backward, so a
    # list taken from the module here would hold tensors that never get a gradient and the norm (and the
    # clipping) would miss them.
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    device = next(model.parameters()).device
    acc: dict[str, float] = {}
    sums: dict[str, float] = {}
    tok_total, diff_max, fallbacks, skipped = 0.0, 0.0, 0, 0
    grad_norms: list[float] = []
    model.train()
    for _epoch in range(s.ppo_epochs):
        for micro in mini:
            totals = dict(
                global_num_tokens=_sum(sum(float(b.response_mask.sum()) for r, b in micro if r), env),
                global_num_seqs=_sum(sum(float((b.response_mask.sum(-1) > 0).sum()) for r, b in micro if r), env))
            s_mini = _constant_scale(s, micro, env)
            optimizer.zero_grad(set_to_none=True)
            for rows, b in micro:
                if not rows:  # a padding pass (sharded runs): the same collectives, no gradient
                    with autocast():
                        logp, _ = completion_logprobs(model, b, temperature=temperature,
                                                      suppress_token_ids=suppress_token_ids)
                    backward(logp.float().sum() * 0.0)
                    continue
                m = b.response_mask
                old_lp = pad_rows([old[i] for i in rows], m.shape[1]).to(device)
                adv = torch.tensor([float(advantages[i]) for i in rows], dtype=torch.float32, device=device)
                with autocast():
                    logp, ent = completion_logprobs(model, b, temperature=temperature, with_entropy=True,
                                                    entropy_grad=s.entropy_coeff > 0, suppress_token_ids=suppress_token_ids)
                logp = logp.float()
                if old_from_rollout:
                    d = float(((logp.detach() - old_lp).abs() * m).max()) if m.numel() else 0.0
                    diff_max = max(diff_max, d)
                    if d > logprob_tolerance:  # the exact recomputation: same parameters as the rollout
                        old_lp = logp.detach()
                        fallbacks += 1
                out = compute_policy_loss(s.policy_loss, logp, old_lp, adv, m, s_mini, **totals)
                loss = out.loss
                mets = out.metrics(prefix="actor/")
                if s.entropy_coeff > 0:
                    loss = loss - s.entropy_coeff * aggregate(ent.float(), m, out.agg_mode, **totals,
                                                              loss_scale_factor=s_mini.loss_scale_factor)
                mets["actor/entropy"] = float(masked_mean(ent.detach().float(), m))
                if ref is not None and s.kl_loss_coef > 0:
                    kl_mat = kl_penalty(logp, pad_rows([ref[i] for i in rows], m.shape[1]).to(device), s.kl_loss_type)
                    loss = loss + s.kl_loss_coef * aggregate(kl_mat, m, out.agg_mode, **totals,
                                                             loss_scale_factor=s_mini.loss_scale_factor)
                    mets["actor/kl_loss"] = float(masked_mean(kl_mat.detach(), m))
                backward(loss)
                mets["actor/loss"] = float(loss.detach())
                w = float(m.sum())
                tok_total += w
                for k, v in mets.items():
                    if k in _SUMMED:
                        sums[k] = sums.get(k, 0.0) + v
                    else:
                        acc[k] = acc.get(k, 0.0) + v * w
            gn = clip_gradients(params, s.grad_clip)
            if math.isfinite(gn):
                optimizer.step()
                grad_norms.append(gn)
            else:
                skipped += 1
    optimizer.zero_grad(set_to_none=True)
    if env is not None and env.sharded:  # metrics over every rank's samples
        parts = dist_.all_gather_objects((acc, sums, tok_total, diff_max, fallbacks), env)
        acc = {k: sum(p[0].get(k, 0.0) for p in parts) for k in parts[0][0]}
        sums = {k: sum(p[1].get(k, 0.0) for p in parts) for k in parts[0][1]}
        tok_total, diff_max, fallbacks = sum(p[2] for p in parts), max(p[3] for p in parts), sum(p[4] for p in parts)
    n_updates = len(grad_norms) + skipped
    res = {k: v / max(tok_total, 1.0) for k, v in acc.items()}
    res.update({k: v / max(n_updates, 1) for k, v in sums.items()})
    res["actor/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
    res["actor/skipped_updates"] = float(skipped)
    res["actor/num_updates"] = float(n_updates)
    res["rollout/old_logp_from_rollout"] = 1.0 if old_from_rollout else 0.0
    if old_from_rollout:
        res["rollout/logprob_diff_max"] = diff_max
        res["rollout/logprob_fallback"] = float(fallbacks)
    return res
