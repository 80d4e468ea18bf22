"""Sparse upcycling: a dense ``Qwen3VLForConditionalGeneration`` becomes a
``Qwen3VLMoeForConditionalGeneration`` whose experts are noisy copies of the dense MLP, with a fresh router
(the PRISM authors' ``moe/create_vl_moe.py``, XIAO4579/PRISM at 6079044; see docs/prism_method.md §4.1); and the choice of the transformers experts kernel."""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prism_lab.errors import CheckpointError

# Text-config fields carried over from the dense model (docs/prism_method.md §4.1), when present.
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
# Upcycling (docs/prism_method.md §4.1)


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
    """Sparse upcycling of a dense ``Qwen3VLForConditionalGeneration`` (docs/prism_method.md §4.1).

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
