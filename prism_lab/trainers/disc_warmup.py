"""Offline pairwise warmup of the discriminator (prism_spec.md §5), callable without a StageContext.

Pipeline:

1. :func:`build_comparisons` turns warmup lines into :class:`Comparison` objects (teacher vs student token ids
   for one segment kind, plus the prompt). Student segments come either from the JSONL
   (``student_source="dataset"``) or from the SFT policy (``"policy"``, :func:`policy_student_segments`): the
   policy is rolled out once per warmup prompt (T=1, top_p=1) and each response is split at the caption
   boundary with token offsets. A format-invalid response is NOT dropped: it is split at the fallback
   boundary ``max(1, L // 2)`` (as stage 2 does, §6.2c) and kept as a student (it is a legitimate negative:
   the teacher should be preferred); their share is reported as ``student_invalid_rate``.
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

import json
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
from prism_lab.rollout import Prompt, make_engine
from prism_lab.trainers.common import (
    load_resume_state,
    make_cosine_scheduler,
    remove_resume_state,
    save_resume_state,
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
    limit_pixels,
    plain_ids,
    scored_inputs,
    split_rollout,
    warmup_segment,
)

log_ = logging.getLogger(__name__)

__all__ = [
    "Comparison",
    "ConstantWithWarmup",
    "build_comparisons",
    "heldout_split",
    "policy_student_segments",
    "run_disc_warmup",
    "warmup_prompt",
]

LogFn = Callable[[int, dict[str, float]], None]
STUDENTS_FILE = "students.jsonl"


@dataclass
class Comparison:
    """One warmup comparison: ``teacher_ids`` should score above ``student_ids`` after ``prompt``.

    Segment ids are *content* tokens (no terminator; :func:`warmup_segment` adds it). ``group`` identifies the
    warmup line (held-out splits are by group)."""

    kind: str  # "caption" | "cot" | "response"
    prompt_text: str
    image: Any  # a path, a PIL image or None
    teacher_ids: list[int]
    student_ids: list[int]
    group: int
    system_prompt: str | None = None
    student_valid: bool = True

    def to_prompt(self, max_pixels: int | None = None) -> Prompt:
        return warmup_prompt(self.prompt_text, self.image, system_prompt=self.system_prompt, max_pixels=max_pixels)


def warmup_prompt(text: str, image: Any, *, system_prompt: str | None = None, max_pixels: int | None = None) -> Prompt:
    """messages = [system?, user: [image?, text]] (§5.2) as a rollout :class:`Prompt`."""
    from PIL import Image

    msgs: list[dict] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    images = []
    if image is not None:
        im = image if isinstance(image, Image.Image) else Image.open(image)
        im = limit_pixels(im.convert("RGB"), max_pixels)
        images.append(im)
        msgs.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
    else:
        msgs.append({"role": "user", "content": text})
    return Prompt(messages=msgs, images=images)


# ------------------------------------------------------------------------------------------ students
def policy_student_segments(
    policy: Any,
    processor: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 16,
    engine_kind: str = "auto",
    heartbeat: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Roll the SFT policy out once per prompt and split each response at the caption boundary.

    Returns one dict per prompt: ``caption_ids``, ``cot_ids``, ``response_ids`` (all generated tokens), ``valid``
    (format-valid; invalid ones are split at the fallback boundary) and ``finish_reason``.
    """
    engine = make_engine(policy, processor, kind=engine_kind)
    out: list[dict[str, Any]] = []
    chunk = max(1, batch_size)
    for start in range(0, len(prompts), chunk):
        rolls = engine.generate(list(prompts[start:start + chunk]), n=1, max_new_tokens=max_new_tokens,
                                temperature=temperature, top_p=1.0, do_sample=True, seed=seed + start,
                                return_logprobs=False, batch_size=chunk)
        for r in rolls:
            sp = split_rollout(processor, r.token_ids)
            out.append({"caption_ids": sp.caption_ids, "cot_ids": sp.cot_ids, "response_ids": list(r.token_ids),
                        "valid": sp.valid, "finish_reason": r.finish_reason})
        if heartbeat is not None:
            heartbeat()
    return out


def build_comparisons(
    pairs: Sequence[Any],
    processor: Any,
    *,
    student_source: str = "dataset",
    system_prompt: str | None = None,
    policy: Any | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    rollout_batch_size: int = 16,
    engine_kind: str = "auto",
    cache_path: str | Path | None = None,
    max_pixels: int | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> tuple[list[Comparison], dict[str, float]]:
    """Comparisons from :class:`prism_lab.data.warmup_jsonl.WarmupPair` objects (2 per caption/cot line).

    ``student_source="policy"`` needs ``policy``; its rollouts are cached in ``cache_path`` (JSON lines, one per
    warmup line, reused when the line count matches). ``max_new_tokens`` None = twice the longest teacher
    response (caption + cot) in tokens, at least 64.
    """
    if student_source not in ("policy", "dataset"):
        raise ValueError(f"student_source must be 'policy' or 'dataset', got {student_source!r}")
    # group pairs by their source line, in file order
    groups: dict[tuple[str, int], list[Any]] = {}
    for p in pairs:
        groups.setdefault((getattr(p, "source", ""), int(p.line)), []).append(p)
    keys = list(groups)
    stats: dict[str, float] = {"lines": float(len(keys)), "comparisons": 0.0}

    students: list[dict[str, Any]] | None = None
    if student_source == "policy":
        if policy is None:
            raise ValueError("student_source='policy' needs the SFT policy model")
        cache = Path(cache_path) if cache_path is not None else None
        if cache is not None and cache.is_file():
            rows = [json.loads(x) for x in cache.read_text().splitlines() if x.strip()]
            if len(rows) == len(keys):
                students = rows
                stats["students_from_cache"] = 1.0
        if students is None:
            if max_new_tokens is None:
                longest = 0
                for k in keys:
                    g = groups[k]
                    longest = max(longest, sum(len(plain_ids(processor, p.teacher)) for p in g))
                max_new_tokens = max(64, 2 * longest)
            prompts = [warmup_prompt(groups[k][0].prompt, groups[k][0].image, system_prompt=system_prompt,
                                     max_pixels=max_pixels) for k in keys]
            students = policy_student_segments(policy, processor, prompts, max_new_tokens=max_new_tokens, seed=seed,
                                               batch_size=rollout_batch_size, engine_kind=engine_kind,
                                               heartbeat=heartbeat)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(".tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in students))
                tmp.replace(cache)
        n_inv = sum(1 for s in students if not s["valid"])
        stats["student_invalid_rate"] = n_inv / max(1, len(students))
        stats["student_truncated_rate"] = sum(1 for s in students if s["finish_reason"] == "length") / max(1, len(students))
        stats["student_mean_length"] = sum(len(s["response_ids"]) for s in students) / max(1, len(students))

    comps: list[Comparison] = []
    for gi, k in enumerate(keys):
        for p in groups[k]:
            t_ids = plain_ids(processor, p.teacher)
            valid = True
            if students is None:
                s_ids = plain_ids(processor, p.student)
            else:
                st = students[gi]
                valid = bool(st["valid"])
                s_ids = {"caption": st["caption_ids"], "cot": st["cot_ids"]}.get(p.kind, st["response_ids"])
            comps.append(Comparison(kind=p.kind, prompt_text=p.prompt, image=p.image, teacher_ids=t_ids,
                                    student_ids=list(s_ids), group=gi, system_prompt=system_prompt,
                                    student_valid=valid))
    stats["comparisons"] = float(len(comps))
    return comps, stats


def heldout_split(comps: Sequence[Comparison], fraction: float, seed: int) -> tuple[list[Comparison], list[Comparison]]:
    """(train, heldout) split by ``group``; at least one group is held out when ``fraction > 0`` and there are
    two or more groups."""
    groups = sorted({c.group for c in comps})
    rng = random.Random(seed)
    rng.shuffle(groups)
    n_held = 0
    if fraction > 0 and len(groups) >= 2:
        n_held = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    held = set(groups[:n_held])
    return [c for c in comps if c.group not in held], [c for c in comps if c.group in held]


# ------------------------------------------------------------------------------------------ training
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
                      aux_coef: float):
    pb = PromptBatch.build(processor, [c.to_prompt(max_pixels) for c in comps])
    b = len(comps)
    segs = [warmup_segment(c.teacher_ids, toks, terminator) for c in comps]
    segs += [warmup_segment(c.student_ids, toks, terminator) for c in comps]
    inputs = scored_inputs(pb, list(range(b)) * 2, segs, pad_token_id=toks.pad, positions=positions,
                           max_length=max_length)
    scores, aux = forward_scores(disc, inputs, with_aux=True)
    return warmup_pairwise_loss(scores[:b], scores[b:], aux, aux_coef), scores[:b].detach(), scores[b:].detach()


@torch.no_grad()
def evaluate_pairs(disc: Discriminator, processor: Any, comps: Sequence[Comparison], *, toks: DiscTokens,
                   terminator: Terminator = "original", positions: Positions = "mrope", max_length: int = 8192,
                   max_pixels: int | None = None, batch_size: int = 8) -> dict[str, float]:
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
                                          aux_coef=0.0)
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
) -> dict[str, Any]:
    """Train ``disc`` in place on ``comparisons`` per ``cfg`` (a :class:`DiscWarmupConfig`); returns a summary.

    ``max_steps`` caps the optimiser steps (for tests/measurements); ``save_every`` None = about 10 resume
    saves per run (only with ``out_dir``).
    """
    set_seed(cfg.seed)
    toks = disc_tokens(processor)
    comps = list(comparisons)
    if not comps:
        raise ValueError("no warmup comparisons to train on")
    if cfg.max_pairs is not None and len(comps) > cfg.max_pairs:
        rng = random.Random(cfg.seed)
        idx = sorted(rng.sample(range(len(comps)), cfg.max_pairs))
        comps = [comps[i] for i in idx]
    train, held = heldout_split(comps, cfg.heldout_fraction, cfg.seed)
    if not train:
        raise ValueError("no training comparisons left after the held-out split")
    per_step = cfg.batch_size * cfg.grad_accum
    total = int(math.ceil(len(train) * cfg.epochs / per_step))
    if max_steps is not None:
        total = min(total, int(max_steps))
    total = max(1, total)

    params = [p for p in disc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        sched = make_cosine_scheduler(opt, total_steps=total, warmup_ratio=cfg.warmup_ratio)
    else:
        sched = LambdaLR(opt, ConstantWithWarmup(warmup_steps_for(total, cfg.warmup_ratio)))

    # the sample stream: per-epoch shuffles of the training comparisons, concatenated
    def stream_item(k: int) -> Comparison:
        epoch, pos = divmod(k, len(train))
        order = list(range(len(train)))
        random.Random(cfg.seed * 1_000_003 + epoch).shuffle(order)
        return train[order[pos]]

    resume_dir = Path(out_dir) / "resume" if out_dir is not None else None
    start = 0
    history: list[dict[str, float]] = []
    if resume_dir is not None:
        meta = load_resume_state(resume_dir, model=disc, optimizer=opt, scheduler=sched)
        if meta is not None:
            if meta.get("total_steps") != total or meta.get("n_train") != len(train):
                log_.warning("warmup resume state is for a different run shape; ignoring it")
                remove_resume_state(resume_dir)
            else:
                start = int(meta["step"])
                history = list(meta.get("history", []))
                log_.info("resuming the discriminator warmup at step %d/%d", start, total)
    if save_every is None:
        save_every = max(1, total // 10)
    eval_at = {total} | ({0} if start == 0 else set())
    if eval_points > 0:
        eval_at |= {max(1, round(total * i / eval_points)) for i in range(1, eval_points + 1)}

    def do_eval(step: int) -> dict[str, float]:
        if not held:
            return {}
        res = evaluate_pairs(disc, processor, held, toks=toks, terminator=terminator, positions=positions,
                             max_length=cfg.max_length, max_pixels=cfg.max_pixels, batch_size=eval_batch_size)
        m = {f"warmup/{k}": v for k, v in res.items()}
        if log is not None:
            log(step, m)
        history.append({"step": step, **m})
        return m

    initial = do_eval(0) if 0 in eval_at else {}
    disc.train()
    recent_acc: list[float] = []
    last_eval: dict[str, float] = {}
    skipped = 0
    for step in range(start, total):
        opt.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "bt_loss": 0.0, "aux": 0.0, "acc": 0.0}
        for g in range(cfg.grad_accum):
            k0 = (step * cfg.grad_accum + g) * cfg.batch_size
            batch = [stream_item(k) for k in range(k0, k0 + cfg.batch_size)]
            out, _, _ = _micro_batch_loss(disc, processor, batch, toks, terminator=terminator, positions=positions,
                                          max_length=cfg.max_length, max_pixels=cfg.max_pixels, aux_coef=cfg.aux_coef)
            (out.loss / cfg.grad_accum).backward()
            sums["loss"] += float(out.loss.detach()) / cfg.grad_accum
            sums["bt_loss"] += float(out.bt_loss) / cfg.grad_accum
            sums["aux"] += float(out.aux_loss) / cfg.grad_accum
            sums["acc"] += float(out.acc) / cfg.grad_accum
        gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        lr = float(opt.param_groups[0]["lr"])
        if torch.isfinite(gn):
            opt.step()
        else:
            skipped += 1
            opt.zero_grad(set_to_none=True)
        sched.step()
        recent_acc.append(sums["acc"])
        metrics = {f"warmup/{k}": v for k, v in sums.items()}
        metrics.update({"warmup/lr": lr, "warmup/skipped": float(not torch.isfinite(gn))})
        if torch.isfinite(gn):
            metrics["warmup/grad_norm"] = float(gn)
        if log is not None:
            log(step + 1, metrics)
        if heartbeat is not None:
            heartbeat()
        if (step + 1) in eval_at:
            last_eval = do_eval(step + 1)
            disc.train()
        if resume_dir is not None and (step + 1) % save_every == 0 and step + 1 < total:
            save_resume_state(resume_dir, model=disc, optimizer=opt, scheduler=sched,
                              meta={"step": step + 1, "total_steps": total, "n_train": len(train),
                                    "history": history})
    disc.eval()
    tail = recent_acc[-max(1, len(recent_acc) // 10):] if recent_acc else []
    summary: dict[str, Any] = {
        "steps": total,
        "resumed_from": start,
        "train_comparisons": len(train),
        "heldout_comparisons": len(held),
        "final_train_acc": (sum(tail) / len(tail)) if tail else None,
        "final_heldout_acc": last_eval.get("warmup/heldout_acc"),
        "initial_heldout_acc": initial.get("warmup/heldout_acc"),
        "skipped_steps": skipped,
        "heldout_curve": [(h["step"], h.get("warmup/heldout_acc")) for h in history],
    }
    for kind in ("caption", "cot"):
        if f"warmup/heldout_acc_{kind}" in last_eval:
            summary[f"final_heldout_acc_{kind}"] = last_eval[f"warmup/heldout_acc_{kind}"]
    return summary
