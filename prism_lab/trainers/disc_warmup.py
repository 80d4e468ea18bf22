"""Offline pairwise warmup of the discriminator (docs/prism_method.md §5), callable without a StageContext.

Pipeline:

1. :func:`prism_lab.trainers.warmup_pairs.build_comparisons` turns warmup lines into comparisons (teacher vs
   student token ids for one segment kind, plus the prompt).
2. :func:`run_disc_warmup` trains with ``L = BT + aux_coef * router_aux`` (:func:`warmup_pairwise_loss`), teacher
   and student of each micro-batch in one 2B forward, AdamW + cosine (or constant) schedule with linear warmup,
   gradient accumulation, grad-norm clipping (a non-finite norm skips the update and is counted). A held-out
   split *by warmup line* (so the caption and cot pairs of one prompt stay on one side) is scored in eval mode
   before training, at a few points during it and at the end (pairwise accuracy = mean 1[s_T > s_S]).

Metrics (``log(step, dict)``): ``warmup/loss``, ``warmup/bt_loss``, ``warmup/acc``, ``warmup/aux``,
``warmup/lr``, ``warmup/grad_norm``, ``warmup/skipped``; at evaluation points ``warmup/heldout_acc`` (+
``_caption``/``_cot``) and ``warmup/heldout_loss``. Resumable through ``out_dir/"resume"`` (weights, optimizer,
scheduler, RNG, step) and the cached policy students ``out_dir/"students.jsonl"``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from prism_lab.algos.disc_loss import warmup_pairwise_loss
from prism_lab.models.discriminator import Discriminator
from prism_lab.seeds import derive_seed
from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.checkpoint import RESUME_DIR, load_resume, remove_resume_state, save_resume
from prism_lab.trainers.common import (
    make_cosine_scheduler,
    set_seed,
    warmup_steps_for,
)
from prism_lab.trainers.disc_inputs import (
    DiscTokens,
    Positions,
    PromptBatch,
    Terminator,
    disc_tokens,
    forward_scores,
    scored_inputs,
    warmup_segment,
)
from prism_lab.trainers.optim import clip_gradients
from prism_lab.trainers.precision import autocast_for, resolve_precision
from prism_lab.trainers.recipe import StepPlan, run_steps, start_run
from prism_lab.trainers.sampling import EpochSampler
from prism_lab.trainers.warmup_pairs import Comparison, heldout_split

log_ = logging.getLogger(__name__)

__all__ = ["ConstantWithWarmup", "evaluate_pairs", "run_disc_warmup"]

LogFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class ConstantWithWarmup:
    """Picklable LR lambda: linear warmup then constant."""

    warmup_steps: int

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return float(step) / float(self.warmup_steps)
        return 1.0


def _micro_batch_loss(disc: Discriminator, processor: Any, comps: Sequence[Comparison], toks: DiscTokens, *,
                      terminator: Terminator, positions: Positions, max_length: int, max_pixels: int | None,
                      aux_coef: float, autocast: Callable[[], Any] = contextlib.nullcontext):
    pb = PromptBatch.build(processor, [c.to_prompt(max_pixels) for c in comps])
    b = len(comps)
    segs = [warmup_segment(c.teacher_ids, toks, terminator) for c in comps]
    segs += [warmup_segment(c.student_ids, toks, terminator) for c in comps]
    inputs = scored_inputs(pb, list(range(b)) * 2, segs, pad_token_id=toks.pad, positions=positions,
                           max_length=max_length)
    with autocast():
        scores, aux = forward_scores(disc, inputs, with_aux=True)
    scores = scores.float()
    return warmup_pairwise_loss(scores[:b], scores[b:], aux, aux_coef), scores[:b].detach(), scores[b:].detach()


@torch.no_grad()
def evaluate_pairs(disc: Discriminator, processor: Any, comps: Sequence[Comparison], *, toks: DiscTokens,
                   terminator: Terminator = "original", positions: Positions = "mrope", max_length: int = 8192,
                   max_pixels: int | None = None, batch_size: int = 8,
                   autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, float]:
    """Eval-mode pairwise accuracy (overall and per kind), mean score margin per kind and mean BT loss."""
    if not comps:
        return {}
    was = disc.training
    disc.eval()
    deltas: list[float] = []
    try:
        for i in range(0, len(comps), batch_size):
            _, st, ss = _micro_batch_loss(disc, processor, comps[i:i + batch_size], toks, terminator=terminator,
                                          positions=positions, max_length=max_length, max_pixels=max_pixels,
                                          aux_coef=0.0, autocast=autocast)
            deltas.extend((st - ss).tolist())
    finally:
        disc.train(was)
    d = torch.tensor(deltas, dtype=torch.float64)
    res = {"heldout_acc": float((d > 0).double().mean()),
           "heldout_loss": float(torch.nn.functional.softplus(-d).mean())}
    for kind in ("caption", "cot", "response"):
        idx = [i for i, c in enumerate(comps) if c.kind == kind]
        if idx:
            res[f"heldout_acc_{kind}"] = float((d[idx] > 0).double().mean())
            res[f"heldout_gap_{kind}"] = float(d[idx].mean())  # mean score margin teacher − student
    return res


def _split_comparisons(comparisons: Sequence[Comparison], cfg: Any) -> tuple[list[Comparison], list[Comparison]]:
    """(train, held-out) comparisons: at most ``cfg.max_pairs`` (a seeded sample), held out by warm-up line."""
    comps = list(comparisons)
    if not comps:
        raise ValueError("no warmup comparisons to train on")
    if cfg.max_pairs is not None and len(comps) > cfg.max_pairs:
        rng = random.Random(derive_seed(cfg.seed, "warmup/max_pairs"))
        comps = [comps[i] for i in sorted(rng.sample(range(len(comps)), cfg.max_pairs))]
    train, held = heldout_split(comps, cfg.heldout_fraction, cfg.seed)
    if not train:
        raise ValueError("no training comparisons left after the held-out split")
    return train, held


def _shard(disc: Discriminator, resources: Any, env: dist_.DistEnv, mp: str) -> Any:
    """The sharded accelerator or None: under torchrun the discriminator is FSDP2-sharded over its backbone's
    blocks (in place, before the optimizer is built), computing in the run's precision ``mp``."""
    if not env.sharded:
        if resources is not None and resources.gradient_checkpointing:
            dist_.enable_gradient_checkpointing(disc)
        return None
    acc = dist_.ShardedAccelerator(env, resources, mp)
    acc.prepare_model(disc)
    return acc


def _optimizer(disc: Discriminator, cfg: Any, total: int) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        return opt, make_cosine_scheduler(opt, total_steps=total, warmup_ratio=cfg.warmup_ratio)
    return opt, LambdaLR(opt, ConstantWithWarmup(warmup_steps_for(total, cfg.warmup_ratio)))


def _restore(resume_dir: Path | None, disc, opt, sched, *, total: int, n_train: int,
             env: dist_.DistEnv = dist_.SINGLE) -> tuple[int, list[dict]]:
    """(first step, history) from the resumable state; a state of another run shape is discarded."""
    meta = load_resume(resume_dir, model=disc, optimizer=opt, scheduler=sched, env=env) if resume_dir else None
    if meta is None:
        return 0, []
    if meta.get("total_steps") != total or meta.get("n_train") != n_train:
        log_.warning("warmup resume state is for a different run shape; ignoring it")
        remove_resume_state(resume_dir)
        return 0, []
    log_.info("resuming the discriminator warmup at step %d/%d", int(meta["step"]), total)
    return int(meta["step"]), list(meta.get("history", []))


def _warmup_step(disc: Discriminator, processor: Any, batches: Sequence[Sequence[Comparison]], opt, sched, cfg: Any,
                 env: dist_.DistEnv = dist_.SINGLE, acc: Any = None, **score_kw: Any) -> dict[str, float]:
    """One optimizer step over ``batches`` (gradient accumulation); a non-finite grad norm skips the update.

    Sharded (``acc`` a :class:`~prism_lab.trainers.distributed.ShardedAccelerator`): each rank scores its
    share of every micro-batch and backpropagates that share of the batch mean."""
    opt.zero_grad(set_to_none=True)
    sums = {"loss": 0.0, "bt_loss": 0.0, "aux": 0.0, "acc": 0.0}
    for batch in batches:
        mine = dist_.shard_slice(batch, env)  # all of it in one process
        out, _, _ = _micro_batch_loss(disc, processor, mine, aux_coef=cfg.aux_coef, **score_kw)
        share = len(mine) / len(batch) / len(batches)
        if acc is not None:
            acc.backward(out.loss * share)
        else:
            (out.loss * share).backward()
        for k, v in (("loss", out.loss.detach()), ("bt_loss", out.bt_loss), ("aux", out.aux_loss), ("acc", out.acc)):
            sums[k] += float(v) * share
    if env.sharded:  # the batch means over every rank's rows
        sums = {k: dist_.all_reduce_sum(v, env) for k, v in sums.items()}
    gn = clip_gradients([p for p in disc.parameters() if p.requires_grad], cfg.grad_clip)
    lr = float(opt.param_groups[0]["lr"])
    finite = math.isfinite(gn)
    if finite:
        opt.step()
    else:
        opt.zero_grad(set_to_none=True)
    sched.step()
    metrics = {f"warmup/{k}": v for k, v in sums.items()}
    metrics.update({"warmup/lr": lr, "warmup/skipped": float(not finite)})
    if finite:
        metrics["warmup/grad_norm"] = float(gn)
    return metrics


class _WarmupRun:
    """The warmup's own part of the recipe (trainers/recipe.py): one optimizer step (plus the held-out evaluation
    when the step is an evaluation point) and its resumable state."""

    def __init__(self, disc, processor, train, held, cfg, *, env, acc, opt, sched, resume_dir, history, eval_at,
                 eval_batch_size, score_kw) -> None:
        self.disc, self.processor, self.train, self.held, self.cfg = disc, processor, train, held, cfg
        self.env, self.acc, self.opt, self.sched, self.resume_dir = env, acc, opt, sched, resume_dir
        self.history, self.eval_at, self.eval_batch_size, self.score_kw = history, eval_at, eval_batch_size, score_kw
        self.per_step = cfg.batch_size * cfg.grad_accum
        self.sampler = EpochSampler(len(train), cfg.seed, "warmup/pairs", what="warmup comparisons")
        self.recent_acc: list[float] = []
        self.last_eval: dict[str, float] = {}
        self.skipped = 0
        self.total = 0

    def evaluate(self, step: int) -> dict[str, float]:
        if not self.held:
            return {}
        m = {f"warmup/{k}": v for k, v in evaluate_pairs(self.disc, self.processor, self.held,
                                                          batch_size=self.eval_batch_size, **self.score_kw).items()}
        self.history.append({"step": step, **m})
        return m

    def step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        batches = [[self.train[i] for i in self.sampler.take(cfg.batch_size)] for _ in range(cfg.grad_accum)]
        metrics = _warmup_step(self.disc, self.processor, batches, self.opt, self.sched, cfg, self.env, self.acc,
                               **self.score_kw)
        self.skipped += int(metrics["warmup/skipped"])
        self.recent_acc.append(metrics["warmup/acc"])
        if (step + 1) in self.eval_at:  # logged with the step's metrics
            self.last_eval = self.evaluate(step + 1)
            metrics.update(self.last_eval)
            self.disc.train()
        return metrics

    def save(self, steps_done: int) -> None:
        if self.resume_dir is not None:
            save_resume(self.resume_dir, model=self.disc, optimizer=self.opt, scheduler=self.sched, env=self.env,
                        meta={"step": steps_done, "total_steps": self.total, "n_train": len(self.train),
                              "history": self.history})


def run_disc_warmup(
    disc: Discriminator,
    processor: Any,
    comparisons: Sequence[Comparison],
    cfg: Any,
    *,
    out_dir: str | Path | None = None,
    log: LogFn | None = None,
    heartbeat: Callable[[], None] | None = None,
    terminator: Terminator = "original",
    positions: Positions = "mrope",
    eval_points: int = 10,
    eval_batch_size: int = 8,
    save_every: int | None = None,
    max_steps: int | None = None,
    env: dist_.DistEnv | None = None,
) -> dict[str, Any]:
    """Train ``disc`` in place on ``comparisons`` per ``cfg`` (a :class:`DiscWarmupConfig`); returns a summary.

    ``max_steps`` caps the optimiser steps (for tests/measurements); ``save_every`` None = about 10 resume
    saves per run (only with ``out_dir``). ``env``: the stage run's distributed env (None: started here). The loop
    around the steps is :func:`~prism_lab.trainers.recipe.run_steps`; the precision is ``cfg.precision``
    (:mod:`~prism_lab.trainers.precision`).
    """
    set_seed(cfg.seed)
    toks = disc_tokens(processor)
    train, held = _split_comparisons(comparisons, cfg)
    per_step = cfg.batch_size * cfg.grad_accum
    total = int(math.ceil(len(train) * cfg.epochs / per_step))
    total = max(1, min(total, int(max_steps)) if max_steps is not None else total)
    resources = getattr(cfg, "resources", None)
    env = env if env is not None else start_run(resources)
    mp = resolve_precision(getattr(cfg, "precision", "auto"), env.device.type if env.sharded
                           else next(disc.parameters()).device.type)
    acc = _shard(disc, resources, env, mp)
    autocast = acc.autocast if acc is not None else autocast_for(mp, disc)[0]
    opt, sched = _optimizer(disc, cfg, total)
    resume_dir = Path(out_dir) / RESUME_DIR if out_dir is not None else None
    start, history = _restore(resume_dir, disc, opt, sched, total=total, n_train=len(train), env=env)
    save_every = save_every if save_every is not None else max(1, total // 10)
    eval_at = {total} | ({0} if start == 0 else set())
    if eval_points > 0:
        eval_at |= {max(1, round(total * i / eval_points)) for i in range(1, eval_points + 1)}
    score_kw = dict(toks=toks, terminator=terminator, positions=positions, max_length=cfg.max_length,
                    max_pixels=cfg.max_pixels, autocast=autocast)
    run = _WarmupRun(disc, processor, train, held, cfg, env=env, acc=acc, opt=opt, sched=sched, resume_dir=resume_dir,
                     history=history, eval_at=eval_at, eval_batch_size=eval_batch_size, score_kw=score_kw)
    run.total = total
    run.sampler.seek(start * per_step)
    initial = run.evaluate(0) if 0 in eval_at else {}
    if initial and log is not None:
        log(0, initial)
    disc.train()
    run_steps(run, StepPlan(total=total, start=start, save_every=save_every), env, log=log, heartbeat=heartbeat)
    disc.eval()
    recent_acc, last_eval = run.recent_acc, run.last_eval
    tail = recent_acc[-max(1, len(recent_acc) // 10):] if recent_acc else []
    summary: dict[str, Any] = {
        "steps": total, "resumed_from": start, "train_comparisons": len(train), "heldout_comparisons": len(held),
        "final_train_acc": (sum(tail) / len(tail)) if tail else None,
        "final_heldout_acc": last_eval.get("warmup/heldout_acc"),
        "initial_heldout_acc": initial.get("warmup/heldout_acc"), "skipped_steps": run.skipped,
        "heldout_curve": [(h["step"], h.get("warmup/heldout_acc")) for h in history],
    }
    for kind in ("caption", "cot"):
        if f"warmup/heldout_acc_{kind}" in last_eval:
            summary[f"final_heldout_acc_{kind}"] = last_eval[f"warmup/heldout_acc_{kind}"]
    return summary
