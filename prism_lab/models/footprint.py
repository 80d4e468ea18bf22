"""The shape of a model, counted on the meta device (no weights are read or allocated).

``model_shape(ref)`` builds the Qwen3-VL policy a model reference names (a preset, a local checkpoint
directory, or a hub id of a known preset) with ``torch.device("meta")`` and counts its parameters: in
total, in the largest transformer block (the unit FSDP gathers at once) and outside the blocks (the
root unit: embeddings, LM head, final norm, patch embedding, mergers). ``discriminator_shape`` does
the same for the upcycled MoE discriminator. The memory planner (``prism_lab.harness.memory``) turns
these numbers into bytes per device.

Hub presets use the dimensions published in each checkpoint's config.json (see ``presets.py``) and
the Qwen3-VL vocabulary of 151,936 tokens: Qwen3-VL-2B/4B/8B-Instruct count 2.128B, 4.438B and 8.767B
parameters, their published sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from prism_lab.errors import CheckpointError

#: Vocabulary of the Qwen3-VL tokenizer (``vocab_size`` in the hub checkpoints' config.json).
QWEN3_VL_VOCAB = 151_936


@dataclass(frozen=True)
class ModelShape:
    """Parameter counts and the dimensions the activation estimate needs (plain numbers: JSON-able)."""

    name: str
    params: int
    block_params: int  # the largest FSDP unit: one decoder layer or vision block
    root_params: int  # parameters outside every block
    vision_params: int
    hidden: int
    layers: int
    intermediate: int
    q_dim: int  # attention heads x head_dim
    kv_dim: int  # key/value heads x head_dim
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_intermediate: int
    image_tokens: int  # patches of one image at the preset's image size (before the 2x2 merge)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(model, block_names: set[str]) -> tuple[int, int, int]:
    total = sum(p.numel() for p in model.parameters())
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
    return total, largest, root


def shape_of(model, name: str, image_size: int, patch_size: int) -> ModelShape:
    """Count ``model`` (any device, meta included) into a :class:`ModelShape`."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    total, largest, root = _count(model, names)
    cfg = model.config
    tc, vc = cfg.get_text_config(), cfg.vision_config
    visual = getattr(getattr(model, "model", model), "visual", None)
    return ModelShape(
        name=name, params=total, block_params=largest, root_params=root,
        vision_params=sum(p.numel() for p in visual.parameters()) if visual is not None else 0,
        hidden=tc.hidden_size, layers=tc.num_hidden_layers,
        intermediate=getattr(tc, "moe_intermediate_size", None) and tc.moe_intermediate_size * tc.num_experts_per_tok
        or tc.intermediate_size,
        q_dim=tc.num_attention_heads * tc.head_dim, kv_dim=tc.num_key_value_heads * tc.head_dim, vocab=tc.vocab_size,
        vision_hidden=vc.hidden_size, vision_layers=vc.depth, vision_intermediate=vc.intermediate_size,
        image_tokens=(image_size // patch_size) ** 2,
    )


def hub_config(preset, vocab_size: int = QWEN3_VL_VOCAB):
    """A ``Qwen3VLConfig`` with a preset's published dimensions (no download)."""
    from transformers import Qwen3VLConfig

    p = preset
    return Qwen3VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=p.hidden_size, intermediate_size=p.intermediate_size,
                         num_hidden_layers=p.num_hidden_layers, num_attention_heads=p.num_attention_heads,
                         num_key_value_heads=p.num_key_value_heads, head_dim=p.head_dim,
                         tie_word_embeddings=p.tie_word_embeddings),
        vision_config=dict(depth=p.vision_depth, hidden_size=p.vision_hidden_size, num_heads=p.vision_num_heads,
                           intermediate_size=p.vision_intermediate_size, out_hidden_size=p.vision_out_hidden_size,
                           deepstack_visual_indexes=list(p.deepstack_visual_indexes),
                           num_position_embeddings=p.vision_num_position_embeddings, patch_size=p.patch_size,
                           spatial_merge_size=p.spatial_merge_size, temporal_patch_size=p.temporal_patch_size),
        tie_word_embeddings=p.tie_word_embeddings,
    )


def config_for(ref: str, *, tiny_vocab: int = 512):
    """(config, image_size, patch_size) of the model ``ref`` names, without reading any weights.

    Tiny presets get ``tiny_vocab`` tokens (their tokenizer is trained per run); hub presets the
    Qwen3-VL vocabulary; a local directory its config.json; another hub id is an error (nothing to
    read offline).
    """
    from transformers import AutoConfig

    from prism_lab.models.presets import PRESETS, resolve_model_ref

    r = resolve_model_ref(ref)
    if r.kind == "local":
        from prism_lab.models.checkpoint import read_config

        read_config(r.path)  # one line for an unreadable, non-JSON, non-Qwen3-VL or size-less config.json
        try:
            cfg = AutoConfig.from_pretrained(str(r.path), local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 - transformers refusing a field of the user's file
            raise CheckpointError(f"{r.path / 'config.json'}: transformers cannot read it as a Qwen3-VL config "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None
        return cfg, 448, getattr(cfg.vision_config, "patch_size", 16)
    preset = r.preset
    if r.kind == "hub":
        preset = next((p for p in (PRESETS.get(n) for n in PRESETS.names()) if p.hub_id == r.hub_id), None)
        if preset is None:
            raise CheckpointError(f"model {ref!r}: a hub id without a preset; give a local checkpoint directory so "
                                  "its config.json can be read")
    vocab = tiny_vocab if preset.family == "tiny" else QWEN3_VL_VOCAB
    return hub_config(preset, vocab), preset.image_size, preset.patch_size


def _meta_model(config, ref: str):
    import torch
    from transformers import AutoModelForImageTextToText

    try:
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(config)
    except Exception as exc:  # noqa: BLE001 - a local config.json transformers cannot build a model from
        raise CheckpointError(f"model {ref}: building the model its config.json describes failed "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]})") from None


def model_shape(ref: str, *, tiny_vocab: int = 512) -> ModelShape:
    """The :class:`ModelShape` of the policy ``ref`` names, counted on the meta device."""
    config, image_size, patch = config_for(ref, tiny_vocab=tiny_vocab)
    return shape_of(_meta_model(config, ref), ref, image_size, patch)


def discriminator_shape(base_ref: str, *, num_experts: int, top_k: int, kind: str = "moe",
                        tiny_vocab: int = 512) -> ModelShape:
    """The shape of the discriminator upcycled from ``base_ref`` (``kind`` "moe"), or of the dense base
    itself ("dense", "text_only"); the scalar head (hidden x 1) is included."""
    from prism_lab.models.discriminator import moe_config_from_dense

    config, image_size, patch = config_for(base_ref, tiny_vocab=tiny_vocab)
    if kind == "moe":
        config = moe_config_from_dense(config, num_experts=num_experts, top_k=top_k)
    shape = shape_of(_meta_model(config, base_ref), f"{base_ref} ({kind})", image_size, patch)
    head = shape.hidden
    return ModelShape(**{**shape.to_dict(), "params": shape.params + head, "root_params": shape.root_params + head})
