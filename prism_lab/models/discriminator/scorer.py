"""The discriminator module: the VLM's inner model (no LM head) + Dropout -> Linear(d, 1, bias=False); a
sequence's score is the head output at its last valid token (the PRISM authors' ``moe/value_head.py``,
XIAO4579/PRISM at 6079044; see docs/prism_method.md §4.2)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prism_lab.models.discriminator.upcycle import (
    set_experts_implementation,
    upcycle_dense_to_moe,
)

DISC_KINDS = ("moe", "dense", "text_only")

#: Batch keys that carry image/video inputs; the "text_only" ablation drops them (and the mm token types,
#: so positions fall back to 1-D text positions).
_PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids")


def score_at_last_valid_token(per_token: Tensor, attention_mask: Tensor) -> Tensor:
    """``per_token[b, last index where attention_mask[b] == 1]`` for every row: works for left and right
    padding (and for masks with holes). Rows without any valid token get 0."""
    if per_token.shape != attention_mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    mask = attention_mask.to(torch.bool)
    T = mask.shape[-1]
    pos = torch.arange(T, device=mask.device).expand_as(mask)
    last = torch.where(mask, pos, torch.full_like(pos, -1)).max(dim=-1).values  # [B]
    picked = per_token.gather(-1, last.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(last >= 0, picked, torch.zeros_like(picked))


class ScoreHead(nn.Module):
    """Dropout(p) -> Linear(d, 1, bias=False), weights N(0, init_std²). ``v_head`` mirrors the original
    layout name (``v_head.1.weight``)."""

    def __init__(self, hidden_size: int, *, dropout: float = 0.1, init_std: float = 0.02, seed: int | None = None):
        super().__init__()
        self.hidden_size = int(hidden_size)
        self.dropout_p = float(dropout)
        self.init_std = float(init_std)
        self.v_head = nn.Sequential(nn.Dropout(self.dropout_p), nn.Linear(self.hidden_size, 1, bias=False))
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        with torch.no_grad():
            w = torch.randn(self.v_head[1].weight.shape, generator=gen) * self.init_std
            self.v_head[1].weight.copy_(w)

    def forward(self, hidden: Tensor) -> Tensor:
        """``[B, T, d] -> [B, T]`` (computed in the head's dtype)."""
        lin = self.v_head[1]
        return self.v_head(hidden.to(lin.weight.dtype)).squeeze(-1)

    def head_config(self) -> dict[str, Any]:
        return {"hidden_size": self.hidden_size, "dropout": self.dropout_p, "init_std": self.init_std}


class Discriminator(nn.Module):
    """Backbone (the VLM's inner model, no LM head) + :class:`ScoreHead`.

    ``kind``: "moe" (upcycled MoE backbone), "dense" (dense backbone, ablation) or "text_only" (a backbone that
    never sees pixels: image/video inputs are dropped from every batch; ablation). In "text_only" the image
    placeholder tokens that may remain in ``input_ids`` are embedded as ordinary tokens and carry no image
    content; a data pipeline can also omit them.
    """

    def __init__(self, backbone: nn.Module, *, kind: str = "moe", head: ScoreHead | None = None,
                 head_dropout: float = 0.1, head_init_std: float = 0.02, seed: int | None = None):
        super().__init__()
        if kind not in DISC_KINDS:
            raise ValueError(f"unknown discriminator kind {kind!r}; known: {', '.join(DISC_KINDS)}")
        self.kind = kind
        self.backbone = backbone
        hidden = backbone.config.get_text_config().hidden_size
        if head is None:
            head = ScoreHead(hidden, dropout=head_dropout, init_std=head_init_std, seed=seed)
            param = next(backbone.parameters())
            head = head.to(device=param.device, dtype=param.dtype)
        elif head.hidden_size != hidden:
            raise ValueError(f"head hidden size {head.hidden_size} != backbone hidden size {hidden}")
        self.head = head

    @property
    def is_moe(self) -> bool:
        return bool(getattr(self.backbone.config.get_text_config(), "num_experts", 0))

    @property
    def config(self) -> Any:
        return self.backbone.config

    def prepare_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch the backbone sees: drops ``labels``/``use_cache`` and, for "text_only", pixel inputs."""
        out = {k: v for k, v in batch.items() if k not in ("labels", "use_cache", "output_router_logits")}
        if self.kind == "text_only":
            for k in _PIXEL_KEYS:
                out.pop(k, None)
        return out

    def forward(self, *, output_router_logits: bool = True, **batch: Any) -> tuple[Tensor, tuple[Tensor, ...] | None]:
        """``(per_token_scores [B, T], router_logits)``; router_logits = one ``[B*T, E]`` tensor per MoE layer,
        or None for a dense backbone / when not requested."""
        inputs = self.prepare_inputs(batch)
        want_router = output_router_logits and self.is_moe
        if want_router:
            inputs["output_router_logits"] = True
        out = self.backbone(**inputs, use_cache=False)
        scores = self.head(out.last_hidden_state)
        router = tuple(out.router_logits) if want_router and getattr(out, "router_logits", None) is not None else None
        return scores, router

    def score(self, **batch: Any) -> Tensor:
        """Sequence scores ``[B]`` = per-token score at the last valid token of ``attention_mask``."""
        per_token, _ = self.forward(output_router_logits=False, **batch)
        return score_at_last_valid_token(per_token, batch["attention_mask"])


def build_discriminator(dense_vlm: Any, cfg: Any | None = None, **overrides: Any) -> Discriminator:
    """A fresh discriminator from a dense Qwen3-VL (the policy family), per a ``DiscriminatorConfig``.

    "moe" and "text_only" upcycle; "dense" deep-copies the dense inner model (the caller's model is
    never shared or modified).
    """
    from prism_lab.config.align import DiscriminatorConfig

    cfg = DiscriminatorConfig() if cfg is None else cfg
    if overrides:
        cfg = cfg.model_copy(update=overrides)
        cfg = DiscriminatorConfig.model_validate(cfg.model_dump())
    if cfg.kind == "dense":
        backbone = copy.deepcopy(dense_vlm.model)
    else:
        moe = upcycle_dense_to_moe(
            dense_vlm,
            num_experts=cfg.num_experts,
            top_k=cfg.top_k,
            noise_std=cfg.expert_noise_std,
            router_std=cfg.router_init_std,
            seed=cfg.seed,
            router_aux_loss_coef=cfg.router_aux_loss_coef,
        )
        set_experts_implementation(moe, cfg.experts_implementation)
        backbone = moe.model
    return Discriminator(backbone, kind=cfg.kind, head_dropout=cfg.head_dropout,
                         head_init_std=cfg.head_init_std, seed=cfg.seed + 1)
