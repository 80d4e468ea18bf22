"""Discriminator losses (docs/prism_method.md §4.2, §5.3, §6.4, §6.8; every § here is a section of that page). Pure torch functions, no models or I/O.

Conventions: every score tensor is 1-D ``[B]`` (one scalar per sequence, the head output at the last
valid token); ``valid_mask`` is ``[B]`` bool/0-1 (format-valid student samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "D_ACC_NO_VALID_PLACEHOLDER",
    "DiscLossOutput",
    "GadLossOutput",
    "LengthCorrection",
    "WarmupLossOutput",
    "bradley_terry_loss",
    "clip_scores",
    "gad_whole_response_loss",
    "mm_gad_discriminator_loss",
    "replace_nonfinite",
    "router_load_balancing_loss",
    "warmup_pairwise_loss",
]

#: The original logs ``d_acc = 0.92`` when a rank has no format-valid sample (§6.4). It is a logging
#: placeholder only, not a measurement; :class:`DiscLossOutput` also exposes ``d_acc_or_nan`` and
#: ``has_valid`` so that aggregations can skip such steps instead of averaging in a fake 0.92.
D_ACC_NO_VALID_PLACEHOLDER = 0.92


def replace_nonfinite(x: Tensor) -> tuple[Tensor, int]:
    """``x`` with NaN/+-Inf entries replaced by 0, and how many were replaced (never silent)."""
    finite = torch.isfinite(x)
    n_bad = int((~finite).sum().item())
    if n_bad == 0:
        return x, 0
    return torch.where(finite, x, torch.zeros_like(x)), n_bad


def clip_scores(x: Tensor, clip: float | None) -> Tensor:
    """``clamp(x, -clip, clip)``: zero gradient outside the range, exactly as the original (§6.4, §10.6)."""
    if clip is None:
        return x
    return torch.clamp(x, -float(clip), float(clip))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Σ mask·x / max(Σ mask, 1)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def bradley_terry_loss(teacher: Tensor, student: Tensor, valid_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masked Bradley-Terry loss with the teacher preferred (§6.4).

    ``loss = Σ_i v_i · softplus(-(T_i - S_i)) / max(n, 1)`` with ``n = Σ v_i``; ``acc`` = the mean over
    valid samples of ``1[T_i > S_i]``, NaN when there is no valid sample. With no valid sample the loss
    is an exact 0 that is still attached to the graph of both inputs.
    """
    teacher, student = teacher.reshape(-1), student.reshape(-1)
    if teacher.shape != student.shape:
        raise ValueError(f"teacher {tuple(teacher.shape)} and student {tuple(student.shape)} differ in shape")
    v = valid_mask.reshape(-1).to(torch.bool)
    if v.shape != teacher.shape:
        raise ValueError(f"valid_mask {tuple(v.shape)} does not match scores {tuple(teacher.shape)}")
    delta = teacher - student
    loss = _masked_mean(F.softplus(-delta), v)
    n = int(v.sum().item())
    if n > 0:
        acc = ((delta > 0) & v).to(torch.float32).sum() / n
    else:
        acc = torch.tensor(float("nan"))
    return loss, acc.detach()


@dataclass(frozen=True)
class LengthCorrection:
    """Optional ``x <- x - beta * log(1 + len)`` applied before clipping (§6.4; off in the paper's run).

    Lengths are the scored segment lengths ``[B]`` (tokens); ``beta_caption`` applies to both caption
    scores, ``beta_cot`` to both cot scores.
    """

    beta_caption: float
    beta_cot: float
    student_caption_len: Tensor
    student_cot_len: Tensor
    teacher_caption_len: Tensor
    teacher_cot_len: Tensor


@dataclass
class DiscLossOutput:
    """Everything :func:`mm_gad_discriminator_loss` computes. Tensors are scalars.

    ``loss`` carries the graph. Accuracies: ``cap_acc``/``cot_acc`` are NaN when there is no valid sample;
    ``d_acc`` reproduces the original's logged value (``D_ACC_NO_VALID_PLACEHOLDER`` = 0.92 when there is no
    valid sample); ``d_acc_or_nan`` is NaN in that case instead. ``n_nonfinite`` counts the NaN/Inf scores
    replaced by 0 across the four inputs.
    """

    loss: Tensor
    pair_loss: Tensor
    cap_loss: Tensor
    cot_loss: Tensor
    fallback_loss: Tensor
    reg: Tensor
    cap_acc: Tensor
    cot_acc: Tensor
    d_acc: Tensor
    d_acc_or_nan: Tensor
    valid_ratio: Tensor
    n_valid: int
    n_valid_global: int
    has_valid: bool
    used_fallback: bool
    n_nonfinite: int
    teacher_caption_mean: Tensor
    teacher_cot_mean: Tensor
    student_caption_mean: Tensor
    student_cot_mean: Tensor

    def metrics(self, prefix: str = "critic/") -> dict[str, float]:
        """Plain-float metrics for logging (everything except the graph-carrying ``loss`` as a tensor)."""
        out: dict[str, float] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = float(v.detach().float().item())
            elif isinstance(v, bool):
                v = float(v)
            out[prefix + f.name] = float(v)
        return out


def _prepared_scores(
    raw: tuple[Tensor, Tensor, Tensor, Tensor],
    valid_mask: Tensor,
    *,
    score_clip: float | None,
    length_correction: LengthCorrection | None,
) -> tuple[list[Tensor], Tensor, int]:
    """Steps 1-3 of :func:`mm_gad_discriminator_loss`: the (s_cap, s_cot, t_cap, t_cot) scores flattened,
    non-finite values replaced by 0, optionally length-corrected, then clipped; with the boolean valid
    mask and the number of non-finite scores replaced."""
    scores = [x.reshape(-1) for x in raw]
    B = scores[0].shape[0]
    for name, x in zip(("s_cot", "t_cap", "t_cot"), scores[1:]):
        if x.shape[0] != B:
            raise ValueError(f"{name} has {x.shape[0]} scores, s_cap has {B}")
    v = valid_mask.reshape(-1).to(device=scores[0].device, dtype=torch.bool)
    if v.shape[0] != B:
        raise ValueError(f"valid_mask has {v.shape[0]} entries, scores have {B}")

    n_nonfinite = 0
    cleaned = []
    for x in scores:
        x, n_bad = replace_nonfinite(x)
        n_nonfinite += n_bad
        cleaned.append(x)
    sc, so, tc, to = cleaned

    if length_correction is not None:
        lc = length_correction

        def corr(x: Tensor, beta: float, length: Tensor) -> Tensor:
            return x - beta * torch.log1p(length.reshape(-1).to(x.dtype).to(x.device))

        sc = corr(sc, lc.beta_caption, lc.student_caption_len)
        so = corr(so, lc.beta_cot, lc.student_cot_len)
        tc = corr(tc, lc.beta_caption, lc.teacher_caption_len)
        to = corr(to, lc.beta_cot, lc.teacher_cot_len)

    return [clip_scores(x, score_clip) for x in (sc, so, tc, to)], v, n_nonfinite


def mm_gad_discriminator_loss(
    s_cap: Tensor,
    s_cot: Tensor,
    t_cap: Tensor,
    t_cot: Tensor,
    valid_mask: Tensor,
    *,
    score_clip: float | None = 10.0,
    score_reg_coef: float = 0.001,
    fallback_coef: float = 0.01,
    n_valid_global: int | Tensor | None = None,
    length_correction: LengthCorrection | None = None,
) -> DiscLossOutput:
    """The stage-2 discriminator loss ``L = L_D + λ_reg · R`` of §6.4, in the original's order.

    1. NaN/Inf scores -> 0 (counted in ``n_nonfinite``).
    2. Optional length correction ``x - β·log(1+len)``.
    3. ``clamp(x, -score_clip, score_clip)`` (zero gradient outside the range).
    4. ``L_pair = BT(T_cap, S_cap) + BT(T_cot, S_cot)`` over valid samples, each divided by ``max(n_loc, 1)``.
    5. ``L_fb = fallback_coef · [softplus(-mean T_cap) + softplus(-mean T_cot)]`` (all samples).
    6. ``L_D = 1[n_glob > 0]·L_pair + 1[n_glob = 0]·L_fb``; ``n_glob`` = ``n_valid_global`` (the all-reduced
       count across ranks) or the local count when None. Both terms stay in the graph, so every rank
       backpropagates through the same modules whatever its local valid count.
    7. ``R = ¼(mean S_cap² + mean S_cot² + mean T_cap² + mean T_cot²)`` over ALL samples (invalid included),
       on the clipped scores.

    The dynamic-batch scaling ``loss · (b / mini_batch_size)`` is the trainer's job, not done here.
    """
    (sc, so, tc, to), v, n_nonfinite = _prepared_scores(
        (s_cap, s_cot, t_cap, t_cot), valid_mask, score_clip=score_clip, length_correction=length_correction
    )
    B = sc.shape[0]

    cap_loss, cap_acc = bradley_terry_loss(tc, sc, v)
    cot_loss, cot_acc = bradley_terry_loss(to, so, v)
    pair_loss = cap_loss + cot_loss
    fallback_loss = fallback_coef * (F.softplus(-tc.mean()) + F.softplus(-to.mean()))

    n_loc = int(v.sum().item())
    if n_valid_global is None:
        n_glob = n_loc
    elif isinstance(n_valid_global, Tensor):
        n_glob = int(n_valid_global.item())
    else:
        n_glob = int(n_valid_global)
    use_pair = n_glob > 0
    disc_loss = float(use_pair) * pair_loss + float(not use_pair) * fallback_loss

    reg = 0.25 * ((sc**2).mean() + (so**2).mean() + (tc**2).mean() + (to**2).mean())
    loss = disc_loss + score_reg_coef * reg

    has_valid = n_loc > 0
    if has_valid:
        d_acc_or_nan = 0.5 * (cap_acc + cot_acc)
        d_acc = d_acc_or_nan
    else:
        d_acc_or_nan = torch.tensor(float("nan"))
        d_acc = torch.tensor(D_ACC_NO_VALID_PLACEHOLDER)

    return DiscLossOutput(
        loss=loss,
        pair_loss=pair_loss.detach(),
        cap_loss=cap_loss.detach(),
        cot_loss=cot_loss.detach(),
        fallback_loss=fallback_loss.detach(),
        reg=reg.detach(),
        cap_acc=cap_acc,
        cot_acc=cot_acc,
        d_acc=d_acc,
        d_acc_or_nan=d_acc_or_nan,
        valid_ratio=torch.tensor(n_loc / max(B, 1)),
        n_valid=n_loc,
        n_valid_global=n_glob,
        has_valid=has_valid,
        used_fallback=not use_pair,
        n_nonfinite=n_nonfinite,
        teacher_caption_mean=tc.detach().mean(),
        teacher_cot_mean=to.detach().mean(),
        student_caption_mean=sc.detach().mean(),
        student_cot_mean=so.detach().mean(),
    )


class WarmupLossOutput(NamedTuple):
    loss: Tensor  #: bt_loss + aux_coef · aux_loss (carries the graph)
    bt_loss: Tensor
    aux_loss: Tensor
    acc: Tensor  #: mean(Δ > 0)


def warmup_pairwise_loss(
    s_teacher: Tensor, s_student: Tensor, aux_loss: Tensor | float | None, aux_coef: float = 0.01
) -> WarmupLossOutput:
    """Offline warmup loss (§5.3): ``mean_batch[-log σ(s_T - s_S)] + aux_coef · aux``; acc = mean(Δ > 0).

    No masking (every warmup comparison is a valid pair) and no clipping, as in the original.
    """
    delta = s_teacher.reshape(-1) - s_student.reshape(-1)
    bt = F.softplus(-delta).mean()
    if aux_loss is None:
        aux = torch.zeros((), dtype=bt.dtype, device=bt.device)
    elif isinstance(aux_loss, Tensor):
        aux = aux_loss.to(bt.dtype)
    else:
        aux = torch.tensor(float(aux_loss), dtype=bt.dtype, device=bt.device)
    loss = bt + aux_coef * aux
    acc = (delta > 0).to(torch.float32).mean().detach()
    return WarmupLossOutput(loss=loss, bt_loss=bt.detach(), aux_loss=aux.detach(), acc=acc)


def router_load_balancing_loss(
    router_logits: Sequence[Tensor],
    top_k: int,
    num_experts: int,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Switch/Qwen MoE load-balancing loss over all layers (§4.2).

    ``router_logits``: one ``[B*T, E]`` (or ``[B, T, E]``) tensor per MoE layer. All layers are concatenated
    along the token axis. ``f[k, e]`` = masked mean over tokens of the top-k one-hot (k×E), ``P[e]`` = masked
    mean of the softmax probabilities, ``aux = E · Σ_{k,e} f[k,e] · P[e]``. ``attention_mask`` ``[B, T]``
    excludes padding (the same mask for every layer). Uniform routing gives ``aux = top_k``.
    """
    if len(router_logits) == 0:
        raise ValueError("router_logits is empty (was the backbone run with output_router_logits=True?)")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    flat = [x.reshape(-1, x.shape[-1]) for x in router_logits]
    for x in flat:
        if x.shape[-1] != num_experts:
            raise ValueError(f"router logits have {x.shape[-1]} experts, expected {num_experts}")
    logits = torch.cat([x.to(flat[0].device) for x in flat], dim=0).float()
    probs = torch.softmax(logits, dim=-1)  # [N, E]
    top_idx = torch.topk(probs, top_k, dim=-1).indices  # [N, k]
    one_hot = F.one_hot(top_idx, num_experts).to(probs.dtype)  # [N, k, E]
    if attention_mask is None:
        f = one_hot.mean(dim=0)  # [k, E]
        p = probs.mean(dim=0)  # [E]
    else:
        m = attention_mask.reshape(-1).to(probs.device, probs.dtype)
        n_per_layer = flat[0].shape[0]
        if m.shape[0] != n_per_layer:
            raise ValueError(f"attention_mask has {m.shape[0]} tokens, router logits have {n_per_layer} per layer")
        m = m.repeat(len(flat))  # [N]
        denom = m.sum().clamp(min=1.0)
        f = (one_hot * m[:, None, None]).sum(dim=0) / denom
        p = (probs * m[:, None]).sum(dim=0) / denom
    return num_experts * (f * p[None, :]).sum()


class GadLossOutput(NamedTuple):
    loss: Tensor
    acc: Tensor
    n_nonfinite: int


def gad_whole_response_loss(
    s_teacher: Tensor, s_student: Tensor, *, score_clip: float | None = None
) -> GadLossOutput:
    """Whole-response GAD variant (§6.8): ``mean(-log σ(s_T - s_S))`` over the batch, no masking.

    ``s_teacher``/``s_student`` = scores of prompt ⊕ full teacher response / prompt ⊕ full student response.
    NaN/Inf are replaced by 0 and counted; ``score_clip`` (off by default, as in the original variant)
    clamps both before the loss.
    """
    t, n1 = replace_nonfinite(s_teacher.reshape(-1))
    s, n2 = replace_nonfinite(s_student.reshape(-1))
    t, s = clip_scores(t, score_clip), clip_scores(s, score_clip)
    delta = t - s
    loss = F.softplus(-delta).mean()
    acc = (delta > 0).to(torch.float32).mean().detach()
    return GadLossOutput(loss=loss, acc=acc, n_nonfinite=n1 + n2)
