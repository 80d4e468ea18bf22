"""Stage-2 advantages from discriminator scores: ``grpo_multi_reward`` and its six modes (docs/prism_method.md §6.5; every § here is a section of that page),
plus the whole-response GAD reward (§6.8). Pure torch functions over flat ``[B]`` tensors.

Shared pieces (every mode):

* ``F_i = 1[format_score_i <= 0]`` (format-invalid).
* Invalid placement: an invalid sample's caption (cot) score is replaced by ``min_{valid j in G} s_j - 1``,
  or ``-1`` when its group ``G`` has no valid sample; valid samples keep their score.
* ``GN`` = per-group normalisation ``(u - mean_G u) / (std_G u + eps)`` with the unbiased (Bessel) std;
  a group of size 1 uses mean 0 and std 1 (so ``GN(u) = u / (1 + eps)``), as verl does.
* ``A_align = wc·GN(s~cap) + wt·GN(s~cot)``: each channel is normalised on its own, the mix is not.
* ``W_i = 1[acc_i <= 0]·(1 - F_i)`` (format-valid but wrong; needs the rule-reward accuracy).

Modes (priority when several flags are set: sign_align > rlvr_v2 > rlvr > gated_align > acc_gating > align):

* ``align`` (M1, the paper's run): ``A = A_align - fp·F``. NOT multiplied by ``(1 - F)``: the code subtracts the
  penalty only, contrary to its docstring.
* ``acc_gating`` (M2): ``A = c·A_align - wp·W - fp·F``
* ``gated_align`` (M3): ``A = c·A_align·(1-F)(1-W) - wp·W - fp·F``
* ``rlvr`` (M4): ``A = GN(w_acc·acc + w_fmt·fmt) + c·A_align·(1-F)(1-W)``
* ``rlvr_v2`` (M5): ``A = GN(w_acc·acc + w_fmt·fmt - wp·W - fp·F) + c·A_align·(1-F)(1-W)``
* ``sign_align`` (M6): ``A = GN((1-F)(w_acc·acc + w_fmt·fmt - wp·W) - fp·F) + c·A_align·(1-F)(1-2W)``

with ``c = align_coef``, ``wp = wrong_penalty``, ``fp = format_penalty``, ``fmt = format_scores``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from prism_lab.algos.advantages import group_index as _dense_group_index
from prism_lab.algos.advantages import group_normalize_indexed
from prism_lab.registry import Registry

__all__ = [
    "ADVANTAGE_MODES",
    "MODE_FLAGS",
    "AdvantageFn",
    "MultiRewardConfig",
    "align_advantage",
    "broadcast_to_tokens",
    "gad_reward",
    "gad_whole_response_advantage",
    "group_index",
    "group_normalize",
    "grpo_multi_reward",
    "place_invalid_scores",
    "select_mode",
]


@dataclass(frozen=True)
class MultiRewardConfig:
    """Weights of the multi-reward advantage; defaults = the paper's script (§6.5)."""

    caption_weight: float = 0.5
    cot_weight: float = 0.5
    format_penalty: float = 1.5
    align_coef: float = 1.0
    wrong_penalty: float = 1.0
    w_acc: float = 1.0
    w_fmt: float = 1.0
    eps: float = 1e-6


class AdvantageFn(Protocol):
    def __call__(
        self,
        s_cap: Tensor,
        s_cot: Tensor,
        format_scores: Tensor,
        group_ids: Sequence[Hashable] | Tensor,
        *,
        acc: Tensor | None = None,
        cfg: MultiRewardConfig = ...,
    ) -> Tensor: ...


ADVANTAGE_MODES: Registry[AdvantageFn] = Registry("advantage mode")

#: flag name (as in the original trainer config) -> mode name, in priority order (highest first).
MODE_FLAGS: tuple[tuple[str, str], ...] = (
    ("use_sign_align", "sign_align"),
    ("use_rlvr_v2", "rlvr_v2"),
    ("use_rlvr", "rlvr"),
    ("use_gated_align", "gated_align"),
    ("use_acc_gating", "acc_gating"),
)


def select_mode(flags: Mapping[str, Any] | Any | None = None, **kw: Any) -> str:
    """The mode the original picks from its boolean flags (M6 > M5 > M4 > M3 > M2 > M1 = "align").

    ``flags`` is a mapping or an object with ``use_*`` attributes; keyword arguments override it.
    Unknown ``use_*`` keys raise, so a typo cannot silently select the default mode.
    """
    known = {f for f, _ in MODE_FLAGS}
    values: dict[str, bool] = {}
    if flags is not None:
        if isinstance(flags, Mapping):
            items = dict(flags)
        else:
            items = {f: getattr(flags, f) for f in known if hasattr(flags, f)}
        values.update({k: bool(v) for k, v in items.items()})
    values.update({k: bool(v) for k, v in kw.items()})
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise KeyError(f"unknown advantage-mode flag(s) {unknown}; known: {sorted(known)}")
    for flag, mode in MODE_FLAGS:
        if values.get(flag, False):
            return mode
    return "align"


def group_index(group_ids: Sequence[Hashable] | Tensor, device: torch.device | None = None) -> tuple[Tensor, int]:
    """Map arbitrary group ids (e.g. verl's uid strings) to ``0..G-1`` in order of first appearance."""
    idx, uniq = _dense_group_index(group_ids)
    return idx.to(device) if device is not None else idx, len(uniq)


def group_normalize(x: Tensor, inv: Tensor, n_groups: int, eps: float = 1e-6) -> Tensor:
    """Per-group ``(x - mean) / (std + eps)`` with the unbiased std; groups of size 1 use mean 0, std 1
    (the GRPO normaliser of prism_lab.algos.advantages, applied to one reward channel)."""
    return group_normalize_indexed(x.reshape(-1), inv, n_groups, eps=eps)


def place_invalid_scores(scores: Tensor, invalid: Tensor, inv: Tensor, n_groups: int) -> Tensor:
    """Invalid samples get ``(min over the group's valid samples) - 1``, or ``-1`` if the group has none."""
    scores = scores.reshape(-1)
    invalid = invalid.reshape(-1).to(torch.bool)
    big = torch.full((n_groups,), float("inf"), dtype=scores.dtype, device=scores.device)
    masked = torch.where(invalid, torch.full_like(scores, float("inf")), scores)
    gmin = big.scatter_reduce(0, inv, masked, reduce="amin", include_self=True)
    gmin = torch.where(torch.isinf(gmin), torch.zeros_like(gmin), gmin)
    return torch.where(invalid, gmin[inv] - 1.0, scores)


def _prep(
    s_cap: Tensor, s_cot: Tensor, format_scores: Tensor, group_ids: Sequence[Hashable] | Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    s_cap = s_cap.reshape(-1).float()
    s_cot = s_cot.reshape(-1).float().to(s_cap.device)
    fmt = format_scores.reshape(-1).float().to(s_cap.device)
    B = s_cap.shape[0]
    if s_cot.shape[0] != B or fmt.shape[0] != B:
        raise ValueError(f"s_cap ({B}), s_cot ({s_cot.shape[0]}) and format_scores ({fmt.shape[0]}) differ in length")
    inv, G = group_index(group_ids, device=s_cap.device)
    if inv.shape[0] != B:
        raise ValueError(f"group_ids has {inv.shape[0]} entries, scores have {B}")
    return s_cap, s_cot, fmt, inv, G


def _align_parts(
    s_cap: Tensor, s_cot: Tensor, format_scores: Tensor, group_ids: Sequence[Hashable] | Tensor, cfg: MultiRewardConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """``(A_align, F, fmt, inv, G)``."""
    s_cap, s_cot, fmt, inv, G = _prep(s_cap, s_cot, format_scores, group_ids)
    invalid = fmt <= 0
    cap = place_invalid_scores(s_cap, invalid, inv, G)
    cot = place_invalid_scores(s_cot, invalid, inv, G)
    a_align = cfg.caption_weight * group_normalize(cap, inv, G, cfg.eps) + cfg.cot_weight * group_normalize(
        cot, inv, G, cfg.eps
    )
    return a_align, invalid.float(), fmt, inv, G


def _need_acc(acc: Tensor | None, mode: str, like: Tensor) -> Tensor:
    if acc is None:
        raise ValueError(f"advantage mode {mode!r} needs the rule-reward accuracy `acc`")
    acc = acc.reshape(-1).float().to(like.device)
    if acc.shape != like.shape:
        raise ValueError(f"acc has {acc.shape[0]} entries, scores have {like.shape[0]}")
    return acc


def align_advantage(
    s_cap: Tensor, s_cot: Tensor, format_scores: Tensor, group_ids: Sequence[Hashable] | Tensor, *,
    cfg: MultiRewardConfig = MultiRewardConfig(),
) -> Tensor:
    """``A_align`` alone (no penalty): ``wc·GN(s~cap) + wt·GN(s~cot)``."""
    return _align_parts(s_cap, s_cot, format_scores, group_ids, cfg)[0]


@ADVANTAGE_MODES.register("align")
def _mode_align(s_cap, s_cot, format_scores, group_ids, *, acc=None, cfg=MultiRewardConfig()):
    """M1 (default): ``A = A_align - fp·F``."""
    a_align, Fm, _, _, _ = _align_parts(s_cap, s_cot, format_scores, group_ids, cfg)
    return a_align - cfg.format_penalty * Fm


@ADVANTAGE_MODES.register("acc_gating")
def _mode_acc_gating(s_cap, s_cot, format_scores, group_ids, *, acc=None, cfg=MultiRewardConfig()):
    """M2: ``A = c·A_align - wp·W - fp·F``."""
    a_align, Fm, _, _, _ = _align_parts(s_cap, s_cot, format_scores, group_ids, cfg)
    W = (_need_acc(acc, "acc_gating", Fm) <= 0).float() * (1 - Fm)
    return cfg.align_coef * a_align - cfg.wrong_penalty * W - cfg.format_penalty * Fm


@ADVANTAGE_MODES.register("gated_align")
def _mode_gated_align(s_cap, s_cot, format_scores, group_ids, *, acc=None, cfg=MultiRewardConfig()):
    """M3: ``A = c·A_align·(1-F)(1-W) - wp·W - fp·F``."""
    a_align, Fm, _, _, _ = _align_parts(s_cap, s_cot, format_scores, group_ids, cfg)
    W = (_need_acc(acc, "gated_align", Fm) <= 0).float() * (1 - Fm)
    return cfg.align_coef * a_align * (1 - Fm) * (1 - W) - cfg.wrong_penalty * W - cfg.format_penalty * Fm


@ADVANTAGE_MODES.register("rlvr")
def _mode_rlvr(s_cap, s_cot, format_scores, group_ids, *, acc=None, cfg=MultiRewardConfig()):
    """M4: ``A = GN(w_acc·acc + w_fmt·fmt) + c·A_align·(1-F)(1-W)``."""
    a_align, Fm, fmt, inv, G = _align_parts(s_cap, s_cot, format_scores, group_ids, cfg)
    a = _need_acc(acc, "rlvr", Fm)
    W = (a <= 0).float() * (1 - Fm)
    rule = group_normalize(cfg.w_acc * a + cfg.w_fmt * fmt, inv, G, cfg.eps)
    return rule + cfg.align_coef * a_align * (1 - Fm) * (1 - W)


@ADVANTAGE_MODES.register("rlvr_v2")
def _mode_rlvr_v2(s_cap, s_cot, format_scores, group_ids, *, acc=None, cfg=MultiRewardConfig()):
    """M5: ``A = GN(w_acc·acc + w_fmt·fmt - wp·W - fp·F) + c·A_align·(1-F)(1-W)``."""
    a_align, Fm, fmt, inv, G = _align_parts(s_cap, s_cot, format_scores, group_ids, cfg)
    a = _need_acc(acc, "rlvr_v2", Fm)
    W = (a <= 0).float() * (1 - Fm)
    raw = cfg.w_acc * a + cfg.w_fmt * fmt - cfg.wrong_penalty * W - cfg.format_penalty * Fm
    return group_normalize(raw, inv, G, cfg.eps) + cfg.align_coef * a_align * (1 - Fm) * (1 - W)


@ADVANTAGE_MODES.register("sign_align")
def _mode_sign_align(s_cap, s_cot, format_scores, group_ids, *, acc=None, cfg=MultiRewardConfig()):
    """M6: ``A = GN((1-F)(w_acc·acc + w_fmt·fmt - wp·W) - fp·F) + c·A_align·(1-F)(1-2W)``."""
    a_align, Fm, fmt, inv, G = _align_parts(s_cap, s_cot, format_scores, group_ids, cfg)
    a = _need_acc(acc, "sign_align", Fm)
    W = (a <= 0).float() * (1 - Fm)
    raw = (1 - Fm) * (cfg.w_acc * a + cfg.w_fmt * fmt - cfg.wrong_penalty * W) - cfg.format_penalty * Fm
    return group_normalize(raw, inv, G, cfg.eps) + cfg.align_coef * a_align * (1 - Fm) * (1 - 2 * W)


def grpo_multi_reward(
    mode: str,
    s_cap: Tensor,
    s_cot: Tensor,
    format_scores: Tensor,
    group_ids: Sequence[Hashable] | Tensor,
    *,
    acc: Tensor | None = None,
    cfg: MultiRewardConfig | None = None,
    **overrides: float,
) -> Tensor:
    """Sequence-level advantages ``[B]`` of the named mode. ``overrides`` replace fields of ``cfg``
    (e.g. ``caption_weight=0.7``). Use :func:`broadcast_to_tokens` for the ``[B, T]`` token advantages."""
    fn: Callable[..., Tensor] = ADVANTAGE_MODES.get(mode)
    cfg = cfg if cfg is not None else MultiRewardConfig()
    if overrides:
        cfg = replace(cfg, **overrides)
    return fn(s_cap, s_cot, format_scores, group_ids, acc=acc, cfg=cfg)


def broadcast_to_tokens(adv: Tensor, response_mask: Tensor) -> Tensor:
    """``A_{i,t} = A_i · response_mask_{i,t}`` (the returns equal the advantages)."""
    return adv.reshape(-1, 1).to(response_mask.device) * response_mask.to(adv.dtype)


def gad_reward(s_student: Tensor, *, score_clip: float | None = None) -> Tensor:
    """GAD whole-response reward (§6.8): the student's score at its last token (optionally clipped)."""
    r = s_student.reshape(-1).float()
    r = torch.where(torch.isfinite(r), r, torch.zeros_like(r))
    return r if score_clip is None else r.clamp(-score_clip, score_clip)


def gad_whole_response_advantage(
    s_student: Tensor, group_ids: Sequence[Hashable] | Tensor, *, score_clip: float | None = None, eps: float = 1e-6
) -> Tensor:
    """GRPO outcome advantage of the GAD reward: ``GN(gad_reward)`` per prompt group."""
    r = gad_reward(s_student, score_clip=score_clip)
    inv, G = group_index(group_ids, device=r.device)
    return group_normalize(r, inv, G, eps)
