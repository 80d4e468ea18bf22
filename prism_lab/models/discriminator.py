"""The PRISM discriminator: a sparsely upcycled Qwen3-VL MoE with a scalar score head (prism_spec.md §4).

* :func:`upcycle_dense_to_moe` turns a dense ``Qwen3VLForConditionalGeneration`` into a
  ``Qwen3VLMoeForConditionalGeneration`` whose experts are noisy copies of the dense MLP (§4.1).
* :class:`Discriminator` = the VLM's inner model (no LM head) + Dropout -> Linear(d, 1, bias=False); the
  sequence score is the head output at the last valid token (:func:`score_at_last_valid_token`, §4.2).
* :func:`save_discriminator` / :func:`load_discriminator`: one HF directory, safetensors only, plus
  ``discriminator.json``; loading checks that the discriminator's processor matches the policy's (§10.10).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from prism_lab.errors import CheckpointError

__all__ = [
    "DISC_CONFIG_NAME",
    "DISC_KINDS",
    "HEAD_FILE_NAME",
    "Discriminator",
    "DiscProcessorParts",
    "ScoreHead",
    "build_discriminator",
    "check_compatible",
    "expert_weight_layout",
    "load_discriminator",
    "load_discriminator_processor",
    "moe_config_from_dense",
    "save_discriminator",
    "score_at_last_valid_token",
    "set_experts_implementation",
    "upcycle_dense_to_moe",
]

DISC_CONFIG_NAME = "discriminator.json"
HEAD_FILE_NAME = "score_head.safetensors"
DISC_KINDS = ("moe", "dense", "text_only")
_FORMAT_TAG = "prism_lab.discriminator"
_FORMAT_VERSION = 1

#: Batch keys that carry image/video inputs; the "text_only" ablation drops them (and the mm token types,
#: so positions fall back to 1-D text positions).
_PIXEL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids")

# Text-config fields carried over from the dense model (§4.1), when present.
_TEXT_KEEP = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_parameters",
    "attention_bias",
    "attention_dropout",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "use_cache",
)
_CONFIG_META = ("model_type", "transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype")
_MLP_KEY = re.compile(r"^(?P<prefix>.*\.layers\.(?P<layer>\d+)\.mlp)\.(?P<name>gate_proj|up_proj|down_proj)\.weight$")


# ---------------------------------------------------------------------------------------------------------
# Upcycling (§4.1)


def moe_config_from_dense(
    dense_config: Any,
    *,
    num_experts: int = 4,
    top_k: int = 2,
    router_aux_loss_coef: float = 0.01,
) -> Any:
    """A ``Qwen3VLMoeConfig`` with the dense model's vision config (1:1) and text dims, every layer sparse.

    ``moe_intermediate_size`` = the dense ``intermediate_size`` (each expert is a full MLP copy),
    ``decoder_sparse_step=1``, ``mlp_only_layers=[]``, ``norm_topk_prob=True`` (recorded for clarity: this
    transformers version always renormalises the top-k router weights), no shared expert.
    """
    from transformers import Qwen3VLMoeConfig

    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
    dtext = dense_config.text_config
    text: dict[str, Any] = {}
    for key in _TEXT_KEEP:
        if hasattr(dtext, key):
            text[key] = copy.deepcopy(getattr(dtext, key))
    tie = bool(getattr(dense_config, "tie_word_embeddings", getattr(dtext, "tie_word_embeddings", False)))
    text.update(
        tie_word_embeddings=tie,
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=dtext.intermediate_size,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        router_aux_loss_coef=router_aux_loss_coef,
    )
    vision = {k: v for k, v in dense_config.vision_config.to_dict().items() if k not in _CONFIG_META}
    top = {
        k: getattr(dense_config, k)
        for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
        if hasattr(dense_config, k)
    }
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=tie, **top)


def expert_weight_layout(experts: nn.Module) -> Literal["out_in", "in_out"]:
    """How the installed transformers stores fused expert weights.

    "out_in" (transformers 5.x, checked on 5.24): ``gate_up_proj[e]`` is ``(2I, hidden)`` =
    ``cat([W_gate, W_up], 0)`` and ``down_proj[e]`` is ``(hidden, I)`` = ``W_down`` (used via ``F.linear``).
    "in_out" (the layout the original repository targeted, transformers 4.57): ``gate_up_proj[e]`` is
    ``(hidden, 2I)`` = the transpose and ``down_proj[e]`` is ``(I, hidden)`` = ``W_downᵀ``.
    """
    if getattr(experts, "is_concatenated", True) is False:
        raise NotImplementedError("interleaved gate/up expert layout is not supported")
    transposed = getattr(experts, "is_transposed", None)
    if transposed is None:  # versions without the flag: infer from the shapes (hidden is shared)
        transposed = experts.gate_up_proj.shape[-1] != experts.down_proj.shape[-2]
    return "in_out" if transposed else "out_in"


@torch.no_grad()
def upcycle_dense_to_moe(
    dense_model: Any,
    *,
    num_experts: int = 4,
    top_k: int = 2,
    noise_std: float = 0.01,
    router_std: float = 0.02,
    seed: int = 0,
    router_aux_loss_coef: float = 0.01,
) -> Any:
    """Sparse upcycling of a dense ``Qwen3VLForConditionalGeneration`` (§4.1).

    Every non-MLP weight (vision tower, mergers, embeddings, attention, norms, LM head) is copied exactly.
    Each decoder MLP becomes ``num_experts`` experts, each a copy of the dense SwiGLU MLP plus i.i.d.
    ``N(0, noise_std²)`` noise; the router is drawn from ``N(0, router_std²)``. Noise and router come from a
    ``torch.Generator`` seeded with ``seed`` (CPU), so the result is reproducible.
    """
    from transformers import Qwen3VLMoeForConditionalGeneration

    cfg = moe_config_from_dense(
        dense_model.config, num_experts=num_experts, top_k=top_k, router_aux_loss_coef=router_aux_loss_coef
    )
    dense_sd = dense_model.state_dict()
    ref = next(iter(dense_sd.values()))
    moe = Qwen3VLMoeForConditionalGeneration(cfg).to(dtype=ref.dtype)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def noise(shape: torch.Size) -> Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32) * noise_std

    mlp: dict[str, dict[str, Tensor]] = {}
    for key, val in dense_sd.items():
        m = _MLP_KEY.match(key)
        if m is not None:
            mlp.setdefault(m["prefix"], {})[m["name"]] = val.detach().to("cpu", torch.float32)

    moe_sd = moe.state_dict()
    used: set[str] = set()
    new_sd: dict[str, Tensor] = {}
    for key, target in moe_sd.items():
        if key.endswith(".mlp.experts.gate_up_proj") or key.endswith(".mlp.experts.down_proj"):
            prefix = key.rsplit(".experts.", 1)[0]
            if prefix not in mlp or len(mlp[prefix]) != 3:
                raise CheckpointError(f"upcycling: dense model has no complete MLP at {prefix!r}")
            experts = moe.get_submodule(prefix + ".experts")
            layout = expert_weight_layout(experts)
            w = mlp[prefix]
            if key.endswith("gate_up_proj"):
                base = torch.cat([w["gate_proj"], w["up_proj"]], dim=0)  # (2I, hidden)
            else:
                base = w["down_proj"]  # (hidden, I)
            if layout == "in_out":
                base = base.t()
            if tuple(target.shape[1:]) != tuple(base.shape):
                raise CheckpointError(
                    f"upcycling: {key} expects expert shape {tuple(target.shape[1:])}, dense gives {tuple(base.shape)}"
                )
            stacked = torch.stack([base + noise(base.shape) for _ in range(target.shape[0])])
            new_sd[key] = stacked.to(target.dtype)
            for name in ("gate_proj", "up_proj", "down_proj"):
                used.add(f"{prefix}.{name}.weight")
        elif key.endswith(".mlp.gate.weight"):
            new_sd[key] = (torch.randn(target.shape, generator=gen, dtype=torch.float32) * router_std).to(target.dtype)
        else:
            if key not in dense_sd:
                raise CheckpointError(f"upcycling: MoE weight {key!r} has no dense counterpart")
            src = dense_sd[key]
            if src.shape != target.shape:
                raise CheckpointError(
                    f"upcycling: shape mismatch for {key}: dense {tuple(src.shape)} vs MoE {tuple(target.shape)}"
                )
            new_sd[key] = src.detach().to(target.dtype)
            used.add(key)
    leftover = sorted(set(dense_sd) - used)
    if leftover:
        raise CheckpointError(f"upcycling: dense weights not carried over: {leftover[:5]}")
    moe.load_state_dict(new_sd, strict=True)
    if getattr(dense_model, "generation_config", None) is not None:
        moe.generation_config = copy.deepcopy(dense_model.generation_config)
    return moe.to(ref.device)


def set_experts_implementation(model: nn.Module, impl: str = "auto") -> str:
    """Select the transformers experts kernel; "auto" keeps the default but never batched_mm on CPU.

    Returns the implementation in use. A dense model is left alone (returns "dense").
    """
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    if text is None or not getattr(text, "num_experts", 0):
        return "dense"
    current = getattr(config, "_experts_implementation", None) or "grouped_mm"
    device = next(model.parameters()).device
    if impl == "auto":
        impl = "grouped_mm" if (current == "batched_mm" and device.type == "cpu") else current
    if impl != current and hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(impl)
    return impl


# ---------------------------------------------------------------------------------------------------------
# Discriminator (§4.2)


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


# ---------------------------------------------------------------------------------------------------------
# Processor compatibility (§1, §10.10)


class DiscProcessorParts(NamedTuple):
    tokenizer: Any
    image_processor: Any | None


def _parts(processor: Any) -> DiscProcessorParts:
    if isinstance(processor, DiscProcessorParts):
        return processor
    tok = getattr(processor, "tokenizer", None)
    if tok is None and hasattr(processor, "get_vocab"):
        tok = processor
    ip = getattr(processor, "image_processor", None)
    return DiscProcessorParts(tok, ip)


def _image_settings(ip: Any) -> dict[str, Any]:
    d = ip.to_dict() if hasattr(ip, "to_dict") else dict(vars(ip))
    size = d.get("size") or {}
    if not isinstance(size, Mapping):
        size = {}
    min_pixels = d.get("min_pixels") or size.get("shortest_edge")
    max_pixels = d.get("max_pixels") or size.get("longest_edge")

    def floats(x: Any) -> Any:
        if x is None:
            return None
        if isinstance(x, (list, tuple)):
            return tuple(round(float(v), 6) for v in x)
        return round(float(x), 6)

    return {
        "patch_size": d.get("patch_size"),
        "merge_size": d.get("merge_size"),
        "temporal_patch_size": d.get("temporal_patch_size"),
        "image_mean": floats(d.get("image_mean")),
        "image_std": floats(d.get("image_std")),
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "rescale_factor": floats(d.get("rescale_factor")),
    }


def check_compatible(disc_processor: Any, policy_processor: Any, *, where: str = "discriminator") -> None:
    """Raise :class:`CheckpointError` (one line) unless the discriminator reads the policy's inputs as-is:
    identical tokenizer vocabulary and added/special tokens, and identical image preprocessing (patch size,
    merge size, temporal patch size, mean/std, rescale factor, min/max pixels)."""
    d, p = _parts(disc_processor), _parts(policy_processor)
    if d.tokenizer is None or p.tokenizer is None:
        raise CheckpointError(f"{where}: cannot check compatibility: a processor has no tokenizer")
    dv, pv = d.tokenizer.get_vocab(), p.tokenizer.get_vocab()
    if dv != pv:
        diff = len(set(dv.items()) ^ set(pv.items()))
        raise CheckpointError(
            f"{where}: tokenizer vocabulary differs from the policy's ({len(dv)} vs {len(pv)} tokens, "
            f"{diff} differing entries); the discriminator must read the policy's token ids"
        )

    def added(tok: Any) -> dict[int, tuple[str, bool]]:
        dec = getattr(tok, "added_tokens_decoder", {}) or {}
        return {int(i): (str(t), bool(getattr(t, "special", False))) for i, t in dec.items()}

    da, pa = added(d.tokenizer), added(p.tokenizer)
    if da != pa:
        bad = sorted(set(da.items()) ^ set(pa.items()))[:3]
        raise CheckpointError(f"{where}: special/added tokens differ from the policy's, e.g. {bad}")
    if (d.image_processor is None) != (p.image_processor is None):
        side = "discriminator" if d.image_processor is None else "policy"
        raise CheckpointError(f"{where}: the {side} processor has no image processor; cannot check image settings")
    if d.image_processor is not None:
        ds, ps = _image_settings(d.image_processor), _image_settings(p.image_processor)
        for key in ds:
            if ds[key] != ps[key]:
                raise CheckpointError(
                    f"{where}: image processor {key} differs from the policy's ({ds[key]!r} vs {ps[key]!r})"
                )


# ---------------------------------------------------------------------------------------------------------
# Save / load


def save_discriminator(disc: Discriminator, processor: Any, out_dir: str | Path) -> Path:
    """Write ``out_dir``: the backbone as an HF model (``config.json`` + ``model.safetensors``), the head as
    ``score_head.safetensors`` (key ``v_head.1.weight``, shape ``[1, d]``), the processor files, and
    ``discriminator.json`` (kind, head config, backbone class). Safetensors only, never pickle."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if processor is None:
        raise CheckpointError(f"{out}: a processor is required so that loading can check compatibility")
    disc.backbone.save_pretrained(out, safe_serialization=True)
    head_sd = {k: v.detach().to("cpu").contiguous() for k, v in disc.head.state_dict().items()}
    save_file(head_sd, str(out / HEAD_FILE_NAME), metadata={"format": "pt"})
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(out)
    else:
        parts = _parts(processor)
        parts.tokenizer.save_pretrained(out)
        if parts.image_processor is not None:
            parts.image_processor.save_pretrained(out)
    meta = {
        "format": _FORMAT_TAG,
        "version": _FORMAT_VERSION,
        "kind": disc.kind,
        "backbone_class": type(disc.backbone).__name__,
        "head": disc.head.head_config(),
        "head_file": HEAD_FILE_NAME,
    }
    (out / DISC_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _backbone_class(name: str) -> Any:
    import transformers

    allowed = {"Qwen3VLMoeModel", "Qwen3VLModel"}
    if name not in allowed:
        raise CheckpointError(f"unsupported discriminator backbone class {name!r}; expected one of {sorted(allowed)}")
    return getattr(transformers, name)


def load_discriminator_processor(path: str | Path) -> DiscProcessorParts:
    """The tokenizer and image processor saved with a discriminator (image processor None if absent)."""
    from transformers import AutoImageProcessor, AutoTokenizer

    p = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - turned into one actionable line
        raise CheckpointError(f"{p}: cannot load the discriminator tokenizer ({type(e).__name__}: {e})") from e
    try:
        ip = AutoImageProcessor.from_pretrained(p, local_files_only=True)
    except Exception:  # noqa: BLE001 - a text-only directory legitimately has none
        ip = None
    return DiscProcessorParts(tok, ip)


def load_discriminator(
    path: str | Path,
    *,
    policy_processor: Any | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Discriminator:
    """Load a directory written by :func:`save_discriminator` (in eval mode).

    With ``policy_processor`` the saved processor is checked first (:func:`check_compatible`); a mismatch
    raises :class:`CheckpointError` before any weights are read.
    """
    p = Path(path)
    meta_path = p / DISC_CONFIG_NAME
    if not meta_path.is_file():
        raise CheckpointError(f"{p}: not a discriminator directory (no {DISC_CONFIG_NAME})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: invalid JSON ({e})") from e
    if meta.get("format") != _FORMAT_TAG or meta.get("kind") not in DISC_KINDS:
        raise CheckpointError(f"{meta_path}: unexpected content (format={meta.get('format')!r}, kind={meta.get('kind')!r})")
    head_path = p / meta.get("head_file", HEAD_FILE_NAME)
    for needed in (p / "config.json", head_path):
        if not needed.is_file():
            raise CheckpointError(f"{p}: incomplete discriminator directory, missing {needed.name}")
    if policy_processor is not None:
        check_compatible(load_discriminator_processor(p), policy_processor, where=f"discriminator {p}")

    cls = _backbone_class(str(meta.get("backbone_class")))
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        backbone = cls.from_pretrained(p, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{p}: cannot load the discriminator backbone ({type(e).__name__}: {e})") from e
    hc = meta.get("head") or {}
    head = ScoreHead(int(hc["hidden_size"]), dropout=float(hc.get("dropout", 0.1)), init_std=float(hc.get("init_std", 0.02)))
    sd = load_file(str(head_path))
    try:
        head.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{head_path}: score head does not match discriminator.json ({e})") from e
    param = next(backbone.parameters())
    head = head.to(device=param.device, dtype=dtype or param.dtype)
    disc = Discriminator(backbone, kind=meta["kind"], head=head)
    if device is not None:
        disc = disc.to(device)
    return disc.eval()
