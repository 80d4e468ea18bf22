"""Stage 2: PRISM on-policy adversarial distillation against the MoE discriminator (prism_spec.md §6).

:func:`run_align` is the loop, callable without a StageContext. One step, in the original's order (§6.2):

1. pick ``prompts_per_step`` prompts (a seeded per-epoch permutation: step-indexed, so resuming needs no state)
   and roll out ``n`` responses each with the policy (T = ``cfg.temperature``, top_p, log-probs returned);
2. split every response at the caption boundary from token offsets (:func:`split_rollout`; no prefix
   re-decoding). Format-invalid responses use the fallback boundary ``max(1, L // 2)``;
3. score caption and cot (``prism``) or the whole response (``gad``) with the PRE-update discriminator in eval
   mode without grad. NaN/Inf scores are replaced by 0 and counted (``nonfinite_scores``); then the optional
   length correction, then the clip to ``±score_clip``; invalid samples get 0 scores and format flag 0;
4. advantages: :func:`grpo_multi_reward` (``cfg.advantage_mode``; modes other than "align" also get the rule
   accuracy from :func:`prism_lab.rewards.compute_score`) or, for ``gad``, :func:`gad_whole_response_advantage`;
5. update the discriminator (train mode, ``critic_epochs`` passes, one mini-batch = all rollouts):
   :func:`mm_gad_discriminator_loss` on student vs teacher caption/cot segments (each rollout paired with its own
   prompt's teacher segments) or, for ``gad``, :func:`gad_whole_response_loss` on whole responses. A non-finite
   grad norm skips the update (counted in ``d_skipped``);
6. update the policy with PPO-clip (vanilla, ε_low/ε_high, dual clip, ``loss_agg_mode`` over the whole batch,
   ``ppo_epochs`` passes), the rollout log-probs being the old log-probs (on-policy, ratio ≈ 1). A non-finite
   grad norm skips the update (``actor_skipped``).

Deviation for CPU cost (documented): each prompt's teacher segment is scored ONCE per forward pass and the
score is shared by its ``n`` rollouts, instead of ``n`` identical forwards. In eval mode this is exact; in train
mode the head-dropout mask is shared by the copies (same expectation, fewer independent dropout draws).

Metrics per step (``log(step, dict)``): ``d_loss``, ``d_acc``/``cap_acc``/``cot_acc`` (omitted when no rollout
is format-valid: the original logs a placeholder 0.92 there, which is not a measurement; ``d_has_valid`` says
which), ``valid_ratio``, ``format_rate``, ``score/{teacher,student}_{caption,cot}`` and ``gap/caption``,
``gap/cot`` (teacher − student, train-mode scores of the update forward, clipped, all samples, as the original
logs them), ``pre/student_{caption,cot}`` (the eval-mode scores used for the advantage, valid samples only),
``response_length``, ``truncated_rate``, ``adv/mean``, ``adv/std``, ``nonfinite_scores``, ``d_skipped``,
``actor_skipped``, ``d_grad_norm``, ``actor_grad_norm`` and the PPO metrics ``actor/*``. GAD logs
``score/teacher_response``, ``score/student_response``, ``gap/response`` instead of the caption/cot ones.

Resumable: ``out_dir/"resume"`` holds policy + discriminator weights, both optimizers, the RNG state and the step.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prism_lab.algos.disc_loss import (
    LengthCorrection,
    gad_whole_response_loss,
    mm_gad_discriminator_loss,
    replace_nonfinite,
)
from prism_lab.algos.multi_reward import MultiRewardConfig, gad_whole_response_advantage, grpo_multi_reward
from prism_lab.algos.policy_loss import compute_policy_loss
from prism_lab.errors import DataError
from prism_lab.models.discriminator import Discriminator
from prism_lab.prompts import is_format_valid
from prism_lab.rollout import Prompt, Rollout, make_engine, vision_token_ids
from prism_lab.trainers.common import (
    fresh_temp_dir,
    load_resume_state,
    remove_resume_state,
    resume_candidates,
    save_resume_state,
    set_seed,
    swap_into_place,
)
from prism_lab.trainers.disc_inputs import (
    DiscTokens,
    PromptBatch,
    RolloutSplit,
    disc_tokens,
    online_student_segment,
    online_teacher_segment,
    plain_ids,
    score_segments,
    split_rollout,
)
from prism_lab.trainers.logprobs import completion_logprobs, make_sequence_batch

log_ = logging.getLogger(__name__)

__all__ = [
    "AlignExample",
    "align_examples_from_rl",
    "load_align_resume",
    "ppo_actor_update",
    "run_align",
    "save_align_resume",
]

LogFn = Callable[[int, dict[str, float]], None]
RESUME_DIR = "resume"


@dataclass
class AlignExample:
    """One stage-2 prompt: messages (``<image>`` placeholders allowed), a loader of its images, the teacher
    segments and the verifiable answer (used only by advantage modes M2-M6)."""

    index: int
    messages: list[dict]
    load_images: Callable[[], list]
    teacher_caption: str
    teacher_cot: str
    ground_truth: str = ""
    equivalent_answers: tuple[str, ...] = ()
    where: str = ""

    def prompt(self) -> Prompt:
        return Prompt(messages=[dict(m) for m in self.messages], images=list(self.load_images()))


def align_examples_from_rl(rows: Sequence[Any]) -> list[AlignExample]:
    """:class:`AlignExample` objects from :class:`prism_lab.data.rl_parquet.RLExample` rows. A row without a
    non-empty teacher caption/cot is a :class:`DataError` naming the file and row."""
    out = []
    for r in rows:
        where = f"{getattr(r, 'source', '') or '<rl data>'}: row {getattr(r, 'row', '?')}"
        for fld in ("teacher_caption", "teacher_cot"):
            v = getattr(r, fld, None)
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{where}: field '{fld}': expected a non-empty teacher segment (PRISM alignment "
                                f"needs teacher_caption and teacher_cot), got {v!r}")
        out.append(AlignExample(index=int(r.index), messages=list(r.prompt), load_images=r.load_images,
                                teacher_caption=r.teacher_caption, teacher_cot=r.teacher_cot,
                                ground_truth=str(r.ground_truth), equivalent_answers=tuple(r.equivalent_answers),
                                where=where))
    return out


# ------------------------------------------------------------------------------------------ resume
def save_align_resume(out_dir: str | Path, *, policy: torch.nn.Module, disc: torch.nn.Module,
                      actor_opt: torch.optim.Optimizer, disc_opt: torch.optim.Optimizer, meta: dict) -> Path:
    """Atomically replace ``out_dir/resume`` with ``policy/`` and ``discriminator/`` resumable states."""
    final = Path(out_dir) / RESUME_DIR
    tmp = fresh_temp_dir(final)
    save_resume_state(tmp / "policy", model=policy, optimizer=actor_opt, scheduler=None, meta=meta)
    save_resume_state(tmp / "discriminator", model=disc, optimizer=disc_opt, scheduler=None, meta=meta)
    (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    return swap_into_place(tmp, final)


def load_align_resume(out_dir: str | Path, *, policy: torch.nn.Module, disc: torch.nn.Module,
                      actor_opt: torch.optim.Optimizer, disc_opt: torch.optim.Optimizer) -> dict | None:
    """Restore what :func:`save_align_resume` wrote (or its ``.old`` twin); None when there is nothing."""
    for cand in resume_candidates(Path(out_dir) / RESUME_DIR):
        if (cand / "state.json").is_file():
            meta = load_resume_state(cand / "policy", model=policy, optimizer=actor_opt, scheduler=None,
                                     restore_rng=True)
            dmeta = load_resume_state(cand / "discriminator", model=disc, optimizer=disc_opt, scheduler=None,
                                      restore_rng=False)
            if meta is None or dmeta is None or meta.get("step") != dmeta.get("step"):
                log_.warning("incomplete alignment resume state in %s; ignoring it", cand)
                continue
            return meta
    return None


# ------------------------------------------------------------------------------------------ actor
def _pad_rows(rows: Sequence[Sequence[float]], width: int) -> Tensor:
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, r in enumerate(rows):
        n = min(len(r), width)
        if n:
            out[i, :n] = torch.as_tensor(list(r[:n]), dtype=torch.float32)
    return out


@torch.no_grad()
def _rollout_logprobs(policy: Any, pb: PromptBatch, rows: Sequence[int], completions: Sequence[Sequence[int]], *,
                      pad_id: int, temperature: float, micro_batch: int) -> list[list[float]]:
    """Log-probs of completions under the current policy (for engines that do not return them)."""
    was = policy.training
    policy.eval()
    sup = vision_token_ids(policy)
    out: list[list[float]] = []
    try:
        for s in range(0, len(rows), micro_batch):
            sb = make_sequence_batch(pb.batch, list(rows[s:s + micro_batch]), list(completions[s:s + micro_batch]),
                                     pad_token_id=pad_id, image_chunks=pb.image_chunks)
            dev = next(policy.parameters()).device
            lp, _ = completion_logprobs(policy, sb.to(dev), temperature=temperature, suppress_token_ids=sup)
            for i, c in enumerate(completions[s:s + micro_batch]):
                out.append(lp[i, : len(c)].float().cpu().tolist())
    finally:
        policy.train(was)
    return out


def ppo_actor_update(
    policy: Any,
    optimizer: torch.optim.Optimizer,
    pb: PromptBatch,
    rows: Sequence[int],
    completions: Sequence[Sequence[int]],
    old_logprobs: Sequence[Sequence[float]],
    advantages: Tensor,
    *,
    pad_id: int,
    temperature: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 3.0,
    agg_mode: str = "token-mean",
    grad_clip: float = 1.0,
    epochs: int = 1,
    micro_batch: int = 16,
    loss_name: str = "vanilla",
) -> dict[str, float]:
    """PPO-clip update of ``policy`` on one batch, mini-batch = the whole batch, micro-batched with global
    token/sequence counts so the loss is independent of the micro-batch cut. Returns metrics (``actor/*``,
    ``actor_grad_norm``, ``actor_skipped``)."""
    B = len(completions)
    n_tokens = sum(len(c) for c in completions)
    sup = vision_token_ids(policy)
    dev = next(policy.parameters()).device
    adv = advantages.reshape(-1).float()
    params = [p for p in policy.parameters() if p.requires_grad]
    metrics: dict[str, float] = {}
    skipped = 0
    policy.train()
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        agg: dict[str, float] = {}
        for s in range(0, B, micro_batch):
            e = min(B, s + micro_batch)
            sb = make_sequence_batch(pb.batch, list(rows[s:e]), list(completions[s:e]), pad_token_id=pad_id,
                                     image_chunks=pb.image_chunks).to(dev)
            logp, _ = completion_logprobs(policy, sb, temperature=temperature, suppress_token_ids=sup)
            old = _pad_rows(old_logprobs[s:e], logp.shape[1]).to(dev)
            out = compute_policy_loss(loss_name, logp, old, adv[s:e].to(dev), sb.response_mask.to(logp.dtype),
                                      clip_low=clip_low, clip_high=clip_high, clip_ratio_c=dual_clip,
                                      agg_mode=agg_mode, global_num_tokens=n_tokens, global_num_seqs=B)
            out.loss.backward()
            w = float(sb.response_mask.sum()) / max(1, n_tokens)
            for k, v in out.metrics().items():
                # pg_loss is already a share of the global mean: sum it; the rest are token-weighted means
                agg[k] = agg.get(k, 0.0) + (v if k.endswith("pg_loss") else v * w)
        gn = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        if torch.isfinite(gn):
            optimizer.step()
        else:
            skipped += 1
            optimizer.zero_grad(set_to_none=True)
        metrics = dict(agg)
        if torch.isfinite(gn):
            metrics["actor_grad_norm"] = float(gn)
    metrics["actor_skipped"] = float(skipped)
    return metrics


# ------------------------------------------------------------------------------------------ loop
def _mean(x: Tensor) -> float:
    return float(x.float().mean()) if x.numel() else float("nan")


def _step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + 7919 * int(step) + 17) % (2**31 - 1)


def run_align(
    policy: Any,
    processor: Any,
    disc: Discriminator,
    examples: Sequence[AlignExample],
    cfg: Any,
    *,
    out_dir: str | Path | None = None,
    log: LogFn | None = None,
    heartbeat: Callable[[], None] | None = None,
    engine: Any | None = None,
    engine_kind: str = "hf",
    rollout_batch_size: int = 64,
    disc_micro_batch: int = 16,
    actor_micro_batch: int = 16,
    max_steps: int | None = None,
    keep_resume: bool = False,
) -> dict[str, Any]:
    """Run ``cfg.steps`` PRISM (or GAD) steps on ``policy`` and ``disc`` in place (``cfg``: an AlignConfig).

    ``engine``: a rollout engine to use instead of ``make_engine(policy, processor, engine_kind)`` (it must
    sample from ``policy``; if it returns no log-probs they are recomputed). ``out_dir``: where the resume
    state lives (``out_dir/resume``; restored when present, saved every ``cfg.save_every`` steps, removed at the
    end unless ``keep_resume``). Final weights are NOT written here (the stage saves them). Returns a summary.
    """
    examples = list(examples)
    if not examples:
        raise DataError("no alignment prompts")
    for ex in examples:
        for fld in ("teacher_caption", "teacher_cot"):
            v = getattr(ex, fld)
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{ex.where or f'prompt {ex.index}'}: field '{fld}': expected a non-empty teacher "
                                f"segment, got {v!r}")
    set_seed(cfg.seed)
    toks: DiscTokens = disc_tokens(processor)
    engine = engine if engine is not None else make_engine(policy, processor, kind=engine_kind)
    positions = cfg.critic_positions
    term = cfg.terminator_convention
    gad = cfg.variant == "gad"
    pad_id = toks.pad

    actor_params = [p for p in policy.parameters() if p.requires_grad]
    disc_params = [p for p in disc.parameters() if p.requires_grad]
    actor_opt = torch.optim.AdamW(actor_params, lr=cfg.actor_lr, weight_decay=cfg.weight_decay)
    disc_opt = torch.optim.AdamW(disc_params, lr=cfg.critic_lr, weight_decay=cfg.weight_decay)
    mrc = MultiRewardConfig(caption_weight=cfg.caption_weight, cot_weight=cfg.cot_weight,
                            format_penalty=cfg.format_penalty, align_coef=cfg.align_coef,
                            wrong_penalty=cfg.wrong_penalty, w_acc=cfg.w_acc, w_fmt=cfg.w_fmt, eps=cfg.adv_eps)

    # prompts over max_prompt_length are filtered once (filter_overlong_prompts)
    keep: list[AlignExample] = []
    n_overlong = 0
    for s in range(0, len(examples), 32):
        chunk = examples[s:s + 32]
        pb = PromptBatch.build(processor, [e.prompt() for e in chunk])
        lens = pb.batch["attention_mask"].sum(dim=1).tolist()
        for e, n in zip(chunk, lens):
            if n <= cfg.max_prompt_length:
                keep.append(e)
            else:
                n_overlong += 1
    if not keep:
        raise DataError(f"every alignment prompt is longer than max_prompt_length={cfg.max_prompt_length}")
    if n_overlong:
        log_.warning("alignment: %d of %d prompts exceed max_prompt_length=%d and are skipped",
                     n_overlong, len(examples), cfg.max_prompt_length)
    examples = keep

    teacher_cache: dict[int, tuple[list[int], list[int], list[int]]] = {}

    def teacher_ids(ex_i: int) -> tuple[list[int], list[int], list[int]]:
        if ex_i not in teacher_cache:
            ex = examples[ex_i]
            R = cfg.max_new_tokens
            teacher_cache[ex_i] = (plain_ids(processor, ex.teacher_caption, R), plain_ids(processor, ex.teacher_cot, R),
                                   plain_ids(processor, ex.teacher_caption + "\n" + ex.teacher_cot, R))
        return teacher_cache[ex_i]

    def step_indices(step: int) -> list[int]:
        N, P = len(examples), cfg.prompts_per_step
        out = []
        for j in range(P):
            epoch, pos = divmod(step * P + j, N)
            order = list(range(N))
            random.Random(_step_seed(cfg.seed, -1 - epoch)).shuffle(order)
            out.append(order[pos])
        return out

    total = cfg.steps if max_steps is None else min(cfg.steps, int(max_steps))
    start = 0
    history: list[dict[str, float]] = []
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        meta = load_align_resume(out_path, policy=policy, disc=disc, actor_opt=actor_opt, disc_opt=disc_opt)
        if meta is not None:
            start = int(meta["step"])
            history = list(meta.get("history", []))
            log_.info("resuming alignment at step %d/%d", start, total)

    total_nonfinite = sum(int(h.get("nonfinite_scores", 0)) for h in history)
    for step in range(start, total):
        t0 = time.monotonic()
        idx = step_indices(step)
        prompts = [examples[i].prompt() for i in idx]
        pb = PromptBatch.build(processor, prompts)
        # 1. rollouts
        rolls: list[Rollout] = engine.generate(prompts, n=cfg.n, max_new_tokens=cfg.max_new_tokens,
                                               temperature=cfg.temperature, top_p=cfg.top_p, do_sample=True,
                                               seed=_step_seed(cfg.seed, step), return_logprobs=True,
                                               batch_size=max(cfg.n, rollout_batch_size))
        t_roll = time.monotonic() - t0
        rows = [r.prompt_index for r in rolls]
        uids = list(rows)  # one group per prompt slot of this step
        B = len(rolls)
        # 2. split
        splits: list[RolloutSplit] = [split_rollout(processor, r.token_ids) for r in rolls]
        valid = torch.tensor([sp.valid for sp in splits], dtype=torch.bool)
        fmt = valid.float()
        metrics: dict[str, float] = {
            "valid_ratio": float(fmt.mean()),
            "format_rate": sum(is_format_valid(sp.text) for sp in splits) / max(1, B),
            "response_length": sum(len(r.token_ids) for r in rolls) / max(1, B),
            "truncated_rate": sum(r.finish_reason == "length" for r in rolls) / max(1, B),
        }
        # segments
        stu_full = [online_student_segment(r.token_ids, toks, term) for r in rolls]
        stu_cap = [online_student_segment(sp.caption_ids, toks, term) for sp in splits]
        stu_cot = [online_student_segment(sp.cot_ids, toks, term) for sp in splits]
        t_ids = [teacher_ids(i) for i in idx]
        tea_cap = [online_teacher_segment(t[0], toks, term) for t in t_ids]
        tea_cot = [online_teacher_segment(t[1], toks, term) for t in t_ids]
        tea_full = [online_teacher_segment(t[2], toks, term) for t in t_ids]
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        kw = dict(pad_token_id=pad_id, positions=positions, micro_batch=disc_micro_batch)

        # 3. pre-update scores (eval mode, no grad)
        nonfinite = 0
        disc.eval()
        with torch.no_grad():
            if gad:
                s_resp, nb = replace_nonfinite(score_segments(disc, pb, rows, stu_full, **kw).cpu())
                nonfinite += nb
            else:
                s_cap, n1 = replace_nonfinite(score_segments(disc, pb, rows, stu_cap, **kw).cpu())
                s_cot, n2 = replace_nonfinite(score_segments(disc, pb, rows, stu_cot, **kw).cpu())
                nonfinite += n1 + n2
                beta = cfg.length_correction_beta
                if beta > 0:
                    s_cap = s_cap - beta * torch.log1p(torch.tensor([len(s) for s in stu_cap], dtype=torch.float32))
                    s_cot = s_cot - beta * torch.log1p(torch.tensor([len(s) for s in stu_cot], dtype=torch.float32))
                s_cap = s_cap.clamp(-cfg.score_clip, cfg.score_clip) * fmt
                s_cot = s_cot.clamp(-cfg.score_clip, cfg.score_clip) * fmt
        # 4. advantages
        if gad:
            adv = gad_whole_response_advantage(s_resp, uids, score_clip=None, eps=cfg.adv_eps)
            metrics["pre/student_response"] = _mean(s_resp)
        else:
            acc = None
            if cfg.advantage_mode != "align":
                from prism_lab.rewards import compute_score

                acc = torch.tensor([compute_score(sp.text, examples[idx[r]].ground_truth,
                                                  examples[idx[r]].equivalent_answers).acc
                                    for sp, r in zip(splits, rows)], dtype=torch.float32)
                metrics["rule_acc"] = float(acc.mean())
            adv = grpo_multi_reward(cfg.advantage_mode, s_cap, s_cot, fmt, uids, acc=acc, cfg=mrc)
            if bool(valid.any()):
                metrics["pre/student_caption"] = _mean(s_cap[valid])
                metrics["pre/student_cot"] = _mean(s_cot[valid])
        adv, n_bad_adv = replace_nonfinite(adv.float())
        metrics["adv/mean"] = _mean(adv)
        metrics["adv/std"] = float(adv.std()) if adv.numel() > 1 else 0.0
        if n_bad_adv:
            metrics["nonfinite_advantages"] = float(n_bad_adv)

        # 5. discriminator update
        disc.train()
        d_skipped = 0
        for _ in range(cfg.critic_epochs):
            disc_opt.zero_grad(set_to_none=True)
            if gad:
                S = score_segments(disc, pb, rows, stu_full, **kw)
                T = score_segments(disc, pb, list(range(len(idx))), tea_full, **kw)[rows_t.to(S.device)]
                g = gad_whole_response_loss(T, S, score_clip=None)
                loss = g.loss
                nonfinite += g.n_nonfinite
                Sc, _ = replace_nonfinite(S.detach().cpu())
                Tc, _ = replace_nonfinite(T.detach().cpu())
                dm = {"d_loss": float(g.loss.detach()), "d_acc": float(g.acc), "d_has_valid": 1.0,
                      "score/teacher_response": _mean(Tc), "score/student_response": _mean(Sc),
                      "gap/response": _mean(Tc) - _mean(Sc)}
            else:
                S_cap = score_segments(disc, pb, rows, stu_cap, **kw)
                S_cot = score_segments(disc, pb, rows, stu_cot, **kw)
                uniq = list(range(len(idx)))
                T_cap = score_segments(disc, pb, uniq, tea_cap, **kw)[rows_t.to(S_cap.device)]
                T_cot = score_segments(disc, pb, uniq, tea_cot, **kw)[rows_t.to(S_cap.device)]
                lc = None
                if cfg.length_correction_beta > 0:
                    beta = cfg.length_correction_beta
                    L = lambda segs: torch.tensor([len(s) for s in segs], dtype=torch.float32)  # noqa: E731
                    lc = LengthCorrection(beta, beta, L(stu_cap), L(stu_cot), L(tea_cap)[rows_t], L(tea_cot)[rows_t])
                out = mm_gad_discriminator_loss(S_cap, S_cot, T_cap, T_cot, valid.to(S_cap.device),
                                                score_clip=cfg.score_clip, score_reg_coef=cfg.score_reg_coef,
                                                fallback_coef=cfg.fallback_coef, length_correction=lc)
                loss = out.loss
                nonfinite += out.n_nonfinite
                tc, sc = float(out.teacher_caption_mean), float(out.student_caption_mean)
                to, so = float(out.teacher_cot_mean), float(out.student_cot_mean)
                dm = {"d_loss": float(out.loss.detach()), "d_pair_loss": float(out.pair_loss),
                      "d_cap_loss": float(out.cap_loss), "d_cot_loss": float(out.cot_loss),
                      "d_score_reg": float(out.reg), "d_has_valid": float(out.has_valid),
                      "d_used_fallback": float(out.used_fallback),
                      "score/teacher_caption": tc, "score/student_caption": sc,
                      "score/teacher_cot": to, "score/student_cot": so,
                      "gap/caption": tc - sc, "gap/cot": to - so}
                if out.has_valid:
                    dm.update(d_acc=float(out.d_acc_or_nan), cap_acc=float(out.cap_acc), cot_acc=float(out.cot_acc))
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(disc_params, cfg.grad_clip)
            if torch.isfinite(gn):
                disc_opt.step()
            else:
                d_skipped += 1
                disc_opt.zero_grad(set_to_none=True)
            if torch.isfinite(gn):
                dm["d_grad_norm"] = float(gn)
        metrics.update(dm)
        metrics["d_skipped"] = float(d_skipped)
        metrics["nonfinite_scores"] = float(nonfinite)
        total_nonfinite += nonfinite
        if nonfinite:
            log_.warning("alignment step %d: %d non-finite discriminator scores replaced by 0", step + 1, nonfinite)
        disc.eval()

        # 6. actor update (PPO-clip, on-policy: old log-probs = rollout log-probs)
        comps = [r.token_ids for r in rolls]
        if any(r.logprobs is None for r in rolls):
            old = _rollout_logprobs(policy, pb, rows, comps, pad_id=pad_id, temperature=cfg.temperature,
                                    micro_batch=actor_micro_batch)
        else:
            old = [r.logprobs for r in rolls]
        am = ppo_actor_update(policy, actor_opt, pb, rows, comps, old, adv, pad_id=pad_id,
                              temperature=cfg.temperature, clip_low=cfg.clip_ratio_low, clip_high=cfg.clip_ratio_high,
                              dual_clip=cfg.dual_clip, agg_mode=cfg.loss_agg_mode, grad_clip=cfg.grad_clip,
                              epochs=cfg.ppo_epochs, micro_batch=actor_micro_batch)
        policy.eval()
        metrics.update(am)
        metrics["time/rollout_s"] = t_roll
        metrics["time/step_s"] = time.monotonic() - t0
        if log is not None:
            log(step + 1, dict(metrics))
        history.append({"step": step + 1, **{k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}})
        if heartbeat is not None:
            heartbeat()
        if out_path is not None and cfg.save_every > 0 and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            save_align_resume(out_path, policy=policy, disc=disc, actor_opt=actor_opt, disc_opt=disc_opt,
                              meta={"step": step + 1, "total_steps": total, "history": history})

    if out_path is not None and not keep_resume:
        remove_resume_state(out_path / RESUME_DIR)
    policy.eval()
    disc.eval()
    last = history[-max(1, len(history) // 5):] if history else []

    def tail_mean(key: str) -> float | None:
        vals = [h[key] for h in last if key in h]
        return sum(vals) / len(vals) if vals else None

    keys = ["format_rate", "valid_ratio", "d_acc", "d_loss", "response_length"]
    keys += ["gap/response"] if gad else ["gap/caption", "gap/cot"]
    summary: dict[str, Any] = {
        "steps": total,
        "resumed_from": start,
        "variant": cfg.variant,
        "prompts": len(examples),
        "overlong_prompts_skipped": n_overlong,
        "nonfinite_scores": total_nonfinite,
        "final": {k: tail_mean(k) for k in keys},
        "curves": {k: [(h["step"], h.get(k)) for h in history] for k in keys},
    }
    return summary
