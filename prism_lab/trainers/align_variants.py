"""What differs between the alignment variants, as a registry: everything else is one loop (align.py).

A variant turns one step's rollouts into (a) advantages, from scores of the PRE-update discriminator in
eval mode without grad, and (b) the discriminator's loss, from train-mode scores of the same segments.

* ``prism`` (the paper's method; the authors' repository XIAO4579/PRISM at 6079044, verl's
  ``dp_critic.update_critic`` with critic ``mm_gad`` and ``compute_grpo_multi_reward_advantage``): the
  discriminator scores the caption and the reasoning (cot) segment of each response separately against
  the teacher's; advantages come from :func:`prism_lab.algos.multi_reward.grpo_multi_reward`
  (``advantage_mode``), the loss from :func:`prism_lab.algos.disc_loss.mm_gad_discriminator_loss`.
* ``gad`` (whole-response variant present in the same repository, unused by its scripts): one score per
  response; :func:`gad_whole_response_advantage` and :func:`gad_whole_response_loss`.

Each rollout is paired with its own prompt's teacher segments. Each prompt's teacher segment is scored
once per forward pass and shared by its ``n`` rollouts (exact in eval mode; in train mode the copies
share one head-dropout mask).

Scoring is sharded the same way in one process and in N (:meth:`AlignStep.scores`): each rank scores its
share of the segments and every rank gets the full score vector; the variants compute their advantages and
losses on that whole vector, so group statistics, valid counts and the fallback switch are the global ones.
With gradients the vector is a leaf: :meth:`AlignStep.backward` takes the loss's gradient with respect to
every score and sends each rank's part of it back through that rank's own forwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from prism_lab.algos.disc_loss import (
    LengthCorrection,
    gad_whole_response_loss,
    mm_gad_discriminator_loss,
    replace_nonfinite,
)
from prism_lab.algos.multi_reward import (
    MultiRewardConfig,
    gad_whole_response_advantage,
    grpo_multi_reward,
)
from prism_lab.data.token_budget import token_budget_groups
from prism_lab.registry import Registry
from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.disc_inputs import (
    online_student_segment,
    online_teacher_segment,
    score_segments,
)

__all__ = ["ALIGN_VARIANTS", "AlignStep", "AlignVariant"]


@dataclass
class AlignStep:
    """One step's rollouts, ready to score: the prompt batch, which prompt each rollout answers, the split
    responses (``splits``), the format flags and the scoring options."""

    pb: Any  # trainers.disc_inputs.PromptBatch of the step's unique prompts
    rows: list[int]  # rollout -> row of ``pb``
    rollouts: list[Any]
    splits: list[Any]  # trainers.disc_inputs.RolloutSplit per rollout
    valid: Tensor  # bool [B]: format-valid responses
    teacher_ids: list[tuple[list[int], list[int], list[int]]]  # per prompt row: caption, cot, whole response
    answers: list[tuple[str, tuple[str, ...]]]  # per prompt row: ground truth, equivalent answers
    toks: Any  # trainers.disc_inputs.DiscTokens
    terminator: str
    score_kw: dict[str, Any]  # pad_token_id, positions, micro_batch
    env: dist_.DistEnv = dist_.SINGLE  # whose share of the scoring this process does
    #: (full score leaf, [(its positions this rank scored, the forward's scores)]) per scoring with grad
    pending: list[tuple[Tensor, list[tuple[list[int], Tensor]]]] = field(default_factory=list)

    @property
    def fmt(self) -> Tensor:
        return self.valid.float()

    @property
    def rows_t(self) -> Tensor:
        return torch.as_tensor(self.rows, dtype=torch.long)

    def student(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        return [online_student_segment(x, self.toks, self.terminator) for x in ids]

    def teacher(self, part: int) -> list[list[int]]:
        return [online_teacher_segment(t[part], self.toks, self.terminator) for t in self.teacher_ids]

    def scores(self, disc: Any, segments: Sequence[Sequence[int]], *, per_prompt: bool = False) -> Tensor:
        """Scores of student segments (one per rollout), or of teacher segments (one per prompt row,
        broadcast to the rollouts of that prompt) when ``per_prompt``."""
        if not per_prompt:
            return self._score_all(disc, self.rows, segments)
        s = self._score_all(disc, list(range(len(self.teacher_ids))), segments)
        return s[self.rows_t.to(s.device)]

    def _score_all(self, disc: Any, rows: Sequence[int], segments: Sequence[Sequence[int]]) -> Tensor:
        """``[len(rows)]`` scores of ``prompt row ⊕ segment``: this rank scores every ``world_size``-th one
        and the values are gathered. Every rank runs the same number of forwards (FSDP gathers parameters in
        each; a rank with a smaller share re-scores row 0 as padding). With grad enabled the result is a
        leaf, remembered with the forwards behind it for :meth:`backward`."""
        n, env = len(rows), self.env
        kw = {k: v for k, v in self.score_kw.items() if k not in ("micro_batch", "max_tokens")}
        mine = dist_.shard_slice(list(range(n)), env)
        groups = self._groups(mine, rows, segments, n)
        pieces: list[tuple[list[int], Tensor]] = []
        for idx in groups:
            pick = idx or [0]
            pieces.append((idx, score_segments(disc, self.pb, [rows[i] for i in pick], [segments[i] for i in pick],
                                               micro_batch=len(pick), **kw)))
        device = pieces[0][1].device if pieces else torch.device("cpu")
        full = torch.zeros(n, dtype=torch.float32, device=device)
        local = [(idx, s.detach().float().cpu()) for idx, s in pieces if idx]
        for part in dist_.all_gather_objects(local, env):
            for idx, vals in part:
                full[idx] = vals.to(device)
        if torch.is_grad_enabled():
            full.requires_grad_(True)
            self.pending.append((full, pieces))
        return full

    def _groups(self, mine: list[int], rows: Sequence[int], segments: Sequence[Sequence[int]],
                n: int) -> list[list[int]]:
        """This rank's positions cut into forwards: ``micro_batch`` at a time, or by the token budget ``max_tokens``
        (prompt + segment tokens; data/token_budget.py). Every rank gets as many forwards (empty ones pad)."""
        budget = self.score_kw.get("max_tokens")
        if budget is None:
            mb = max(1, int(self.score_kw.get("micro_batch", 16)))
            return [mine[k * mb:(k + 1) * mb] for k in range(math.ceil(math.ceil(n / self.env.world_size) / mb))]
        prompt_len = self.pb.batch["attention_mask"].sum(dim=1).tolist()
        lengths = [int(prompt_len[rows[i]]) + len(segments[i]) for i in mine]
        groups = [[mine[j] for j in g] for g in token_budget_groups(lengths, int(budget))]
        count = int(dist_.all_reduce_max(len(groups), self.env))
        return groups + [[] for _ in range(count - len(groups))]

    def backward(self, loss: Tensor, *, scale: float = 1.0) -> None:
        """Backpropagate ``loss`` (computed from :meth:`scores` leaves) into the discriminator.

        ``loss.backward()`` gives d loss / d score for every score of the global batch (the same on every
        rank); each rank then sends its own scores' part, times ``scale``, back through its forwards. The
        ranks' parameter gradients sum to the single-process gradient, so ``scale`` is the world size under
        FSDP2 (which averages over ranks) and 1 in one process. Padding forwards get a zero gradient: every
        rank runs the same backward passes."""
        loss.backward()
        for full, pieces in reversed(self.pending):
            g = full.grad if full.grad is not None else torch.zeros_like(full)
            for idx, s in reversed(pieces):
                grad = g[idx] * scale if idx else torch.zeros(s.shape, device=s.device)
                s.backward(grad.to(device=s.device, dtype=s.dtype))
        self.pending.clear()


class AlignVariant(Protocol):
    #: the per-step metrics summarised at the end of the run (beside the shared ones)
    summary_keys: tuple[str, ...]

    def advantages(self, disc: Any, st: AlignStep, cfg: Any) -> tuple[Tensor, int, dict[str, float]]:
        """(advantages [B], non-finite scores replaced, metrics), from eval-mode scores without grad."""
        ...

    def disc_loss(self, disc: Any, st: AlignStep, cfg: Any) -> tuple[Tensor, int, dict[str, float]]:
        """(the discriminator's loss, non-finite scores, metrics), from train-mode scores."""
        ...


ALIGN_VARIANTS: Registry[type] = Registry("alignment variant")


def mean_or_nan(x: Tensor) -> float:
    """Mean of a tensor as a float (nan when it is empty): the per-step metric of both variants and the loop."""
    return float(x.float().mean()) if x.numel() else float("nan")


def _lengths(segments: Sequence[Sequence[int]]) -> Tensor:
    return torch.tensor([len(s) for s in segments], dtype=torch.float32)


@ALIGN_VARIANTS.register("prism")
class PrismVariant:
    """Caption and cot scored apart; the multi-reward advantage of the paper."""

    summary_keys = ("gap/caption", "gap/cot")

    def advantages(self, disc: Any, st: AlignStep, cfg: Any) -> tuple[Tensor, int, dict[str, float]]:
        stu_cap, stu_cot = st.student([sp.caption_ids for sp in st.splits]), st.student([sp.cot_ids for sp in st.splits])
        s_cap, n1 = replace_nonfinite(st.scores(disc, stu_cap).cpu())
        s_cot, n2 = replace_nonfinite(st.scores(disc, stu_cot).cpu())
        beta = cfg.length_correction_beta
        if beta > 0:
            s_cap = s_cap - beta * torch.log1p(_lengths(stu_cap))
            s_cot = s_cot - beta * torch.log1p(_lengths(stu_cot))
        s_cap = s_cap.clamp(-cfg.score_clip, cfg.score_clip) * st.fmt
        s_cot = s_cot.clamp(-cfg.score_clip, cfg.score_clip) * st.fmt
        metrics: dict[str, float] = {}
        acc = None
        if cfg.advantage_mode != "align":
            from prism_lab.rewards import compute_score

            acc = torch.tensor([compute_score(sp.text, *st.answers[r]).acc for sp, r in zip(st.splits, st.rows)],
                               dtype=torch.float32)
            metrics["rule_acc"] = float(acc.mean())
        mrc = MultiRewardConfig(caption_weight=cfg.caption_weight, cot_weight=cfg.cot_weight,
                                format_penalty=cfg.format_penalty, align_coef=cfg.align_coef,
                                wrong_penalty=cfg.wrong_penalty, w_acc=cfg.w_acc, w_fmt=cfg.w_fmt, eps=cfg.adv_eps)
        adv = grpo_multi_reward(cfg.advantage_mode, s_cap, s_cot, st.fmt, list(st.rows), acc=acc, cfg=mrc)
        if bool(st.valid.any()):
            metrics["pre/student_caption"] = mean_or_nan(s_cap[st.valid])
            metrics["pre/student_cot"] = mean_or_nan(s_cot[st.valid])
        return adv, n1 + n2, metrics

    def disc_loss(self, disc: Any, st: AlignStep, cfg: Any) -> tuple[Tensor, int, dict[str, float]]:
        stu_cap, stu_cot = st.student([sp.caption_ids for sp in st.splits]), st.student([sp.cot_ids for sp in st.splits])
        tea_cap, tea_cot = st.teacher(0), st.teacher(1)
        S_cap, S_cot = st.scores(disc, stu_cap), st.scores(disc, stu_cot)
        T_cap, T_cot = st.scores(disc, tea_cap, per_prompt=True), st.scores(disc, tea_cot, per_prompt=True)
        lc = None
        if cfg.length_correction_beta > 0:
            beta, r = cfg.length_correction_beta, st.rows_t
            lc = LengthCorrection(beta, beta, _lengths(stu_cap), _lengths(stu_cot), _lengths(tea_cap)[r],
                                  _lengths(tea_cot)[r])
        out = mm_gad_discriminator_loss(S_cap, S_cot, T_cap, T_cot, st.valid.to(S_cap.device), score_clip=cfg.score_clip,
                                        score_reg_coef=cfg.score_reg_coef, fallback_coef=cfg.fallback_coef,
                                        length_correction=lc)
        tc, sc = float(out.teacher_caption_mean), float(out.student_caption_mean)
        to, so = float(out.teacher_cot_mean), float(out.student_cot_mean)
        m = {"d_loss": float(out.loss.detach()), "d_pair_loss": float(out.pair_loss), "d_cap_loss": float(out.cap_loss),
             "d_cot_loss": float(out.cot_loss), "d_score_reg": float(out.reg), "d_has_valid": float(out.has_valid),
             "d_used_fallback": float(out.used_fallback), "score/teacher_caption": tc, "score/student_caption": sc,
             "score/teacher_cot": to, "score/student_cot": so, "gap/caption": tc - sc, "gap/cot": to - so}
        if out.has_valid:  # the original logs a placeholder there; no valid sample = no accuracy
            m.update(d_acc=float(out.d_acc_or_nan), cap_acc=float(out.cap_acc), cot_acc=float(out.cot_acc))
        return out.loss, out.n_nonfinite, m


@ALIGN_VARIANTS.register("gad")
class GadVariant:
    """One score per whole response (the GAD ablation)."""

    summary_keys = ("gap/response",)

    def advantages(self, disc: Any, st: AlignStep, cfg: Any) -> tuple[Tensor, int, dict[str, float]]:
        s_resp, n = replace_nonfinite(st.scores(disc, st.student([r.token_ids for r in st.rollouts])).cpu())
        adv = gad_whole_response_advantage(s_resp, list(st.rows), score_clip=None, eps=cfg.adv_eps)
        return adv, n, {"pre/student_response": mean_or_nan(s_resp)}

    def disc_loss(self, disc: Any, st: AlignStep, cfg: Any) -> tuple[Tensor, int, dict[str, float]]:
        S = st.scores(disc, st.student([r.token_ids for r in st.rollouts]))
        T = st.scores(disc, st.teacher(2), per_prompt=True)
        g = gad_whole_response_loss(T, S, score_clip=None)
        Sc, _ = replace_nonfinite(S.detach().cpu())
        Tc, _ = replace_nonfinite(T.detach().cpu())
        m = {"d_loss": float(g.loss.detach()), "d_acc": float(g.acc), "d_has_valid": 1.0,
             "score/teacher_response": mean_or_nan(Tc), "score/student_response": mean_or_nan(Sc),
             "gap/response": mean_or_nan(Tc) - mean_or_nan(Sc)}
        return g.loss, g.n_nonfinite, m
