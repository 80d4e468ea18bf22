"""Build tiny random-init Qwen3-VL policies, save them, and load any Qwen3-VL checkpoint offline.

The same ``load_policy`` loads a tiny policy saved by ``save_policy`` and a real Qwen3-VL
(dense or MoE) checkpoint directory. Weights are always read from safetensors (never pickle).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from prism_lab.errors import CheckpointError, ConfigError
from prism_lab.models.attention import choose_attn_implementation, pick_dtype
from prism_lab.models.portable import make_portable
from prism_lab.models.checkpoint import check_loading_info, inspect_checkpoint, model_class
from prism_lab.models.presets import PRESETS, ModelPreset, resolve_model_ref
from prism_lab.models.processor import (
    TinyQwen3VLProcessor,
    build_processor,
    load_processor,
)
from prism_lab.models.tokenizer import special_token_ids



def _get_preset(preset: str | ModelPreset) -> ModelPreset:
    if isinstance(preset, ModelPreset):
        return preset
    try:
        return PRESETS.get(preset)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None


def tiny_config(preset: str | ModelPreset, tokenizer) -> Qwen3VLConfig:
    """The ``Qwen3VLConfig`` of a tiny preset, with vocab and special-token ids from ``tokenizer``."""
    p = _get_preset(preset)
    ids = special_token_ids(tokenizer)
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": p.hidden_size,
        "intermediate_size": p.intermediate_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "num_key_value_heads": p.num_key_value_heads,
        "head_dim": p.head_dim,
        "max_position_embeddings": p.max_position_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": p.rope_theta,
            "mrope_section": p.mrope_section,
            "mrope_interleaved": True,
        },
        "pad_token_id": ids["pad"],
        "bos_token_id": None,
        "eos_token_id": ids["im_end"],
        "tie_word_embeddings": p.tie_word_embeddings,
    }
    vision_config = {
        "depth": p.vision_depth,
        "hidden_size": p.vision_hidden_size,
        "num_heads": p.vision_num_heads,
        "intermediate_size": p.vision_intermediate_size,
        "out_hidden_size": p.vision_out_hidden_size,
        "patch_size": p.patch_size,
        "spatial_merge_size": p.spatial_merge_size,
        "temporal_patch_size": p.temporal_patch_size,
        "num_position_embeddings": p.vision_num_position_embeddings,
        "deepstack_visual_indexes": list(p.deepstack_visual_indexes),
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vision_start"],
        vision_end_token_id=ids["vision_end"],
        tie_word_embeddings=p.tie_word_embeddings,
        pad_token_id=ids["pad"],
        bos_token_id=None,
        eos_token_id=ids["im_end"],
    )


def _set_generation_ids(model, tokenizer) -> None:
    ids = special_token_ids(tokenizer)
    gc = model.generation_config if model.generation_config is not None else GenerationConfig()
    gc.eos_token_id = ids["im_end"]
    gc.pad_token_id = ids["pad"]
    gc.bos_token_id = None
    model.generation_config = gc


def build_tiny_policy(
    preset: str | ModelPreset, tokenizer, *, seed: int, attn_implementation: str | None = None
) -> tuple[Qwen3VLForConditionalGeneration, TinyQwen3VLProcessor]:
    """A random-init Qwen3-VL policy (seeded) and its processor, from a tiny preset and a tokenizer."""
    p = _get_preset(preset)
    if p.family != "tiny":
        raise ConfigError(
            f"preset {p.name} is a hub model ({p.hub_id}); load its checkpoint with load_policy instead of building it"
        )
    config = tiny_config(p, tokenizer)
    config._attn_implementation = attn_implementation or choose_attn_implementation("cpu")
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    _scale_vision_position_init(model)
    _set_generation_ids(model, tokenizer)
    model.eval()
    processor = build_processor(
        tokenizer,
        patch_size=p.patch_size,
        merge_size=p.spatial_merge_size,
        temporal_patch_size=p.temporal_patch_size,
        image_mean=p.image_mean,
        image_std=p.image_std,
    )
    return model, processor


def _scale_vision_position_init(model, std: float = 0.02) -> None:
    """Re-draw the vision tower's learned position table from N(0, std^2).

    transformers leaves this nn.Embedding at its N(0, 1) default. In a tiny vision tower (hidden 32-64)
    a unit-scale position signal is large next to the patch content (the conv patch embedding is drawn
    at 0.02). It was not what kept tiny policies from using the image, though: that was the image
    normalisation (see ``presets.TINY_IMAGE_MEAN``). Real checkpoints are not affected: this runs only
    when a tiny preset is built from scratch.
    """
    with torch.no_grad():
        model.model.visual.pos_embed.weight.normal_(0.0, std)


def save_policy(model, processor, out_dir: str | Path, *, dtype: torch.dtype | None = None,
                state_dict: dict | None = None) -> Path:
    """Write an HF checkpoint directory: model.safetensors, config.json, generation_config.json,
    processor_config.json, tokenizer files, chat_template.jinja and video_preprocessor_config.json,
    portable: plain ``AutoProcessor`` / ``AutoModelForImageTextToText`` load it (models/portable.py).

    ``state_dict``: the weights to write (default: the model's). ``dtype``: cast the floating weights to it
    and state it in ``config.json`` (models/export_dtype.py); None writes them as they are."""
    from prism_lab.models.export_dtype import cast_floating, in_dtype, state_dtype_in_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        weights = state_dict if state_dict is not None else model.state_dict()
        if not in_dtype(weights, dtype):
            state_dict = cast_floating(weights, dtype)
    model.save_pretrained(str(out), state_dict=state_dict)
    if dtype is not None:
        state_dtype_in_config(out, dtype)
    processor.save_pretrained(str(out))
    make_portable(out, processor.tokenizer, model.config)
    return out


def _check_checkpoint_dir(d: Path) -> str:
    """Validate a local checkpoint directory (models.checkpoint.inspect_checkpoint) and return its model_type."""
    return inspect_checkpoint(d)["model_type"]


def _hub_snapshot(hub_id: str, *, local_files_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=hub_id, local_files_only=local_files_only))
    except Exception as exc:  # LocalEntryNotFoundError, offline mode, connection errors, ...
        if local_files_only:
            raise CheckpointError(
                f"model {hub_id} is not available offline (not in the Hugging Face cache); download it elsewhere "
                f"(e.g. `hf download {hub_id} --local-dir DIR`) and pass the local directory DIR as the model"
            ) from None
        raise CheckpointError(f"could not download {hub_id}: {type(exc).__name__}: {exc}") from None


def resolve_checkpoint_dir(ref: str | Path, *, local_files_only: bool = True) -> Path:
    """The local directory of ``ref`` (a directory, a hub preset name or a hub id)."""
    if isinstance(ref, Path):
        _check_checkpoint_dir(ref)
        return ref
    p = Path(ref).expanduser()
    if p.exists():
        _check_checkpoint_dir(p)
        return p
    mref = resolve_model_ref(ref)
    if mref.kind == "preset":
        assert mref.preset is not None
        if mref.preset.family == "tiny":
            raise CheckpointError(
                f"{ref!r} is a tiny random-init preset, not a checkpoint: build it with build_tiny_policy "
                "(or pass the directory a previous stage saved)"
            )
        assert mref.preset.hub_id is not None
        d = _hub_snapshot(mref.preset.hub_id, local_files_only=local_files_only)
    elif mref.kind == "hub":
        assert mref.hub_id is not None
        d = _hub_snapshot(mref.hub_id, local_files_only=local_files_only)
    else:
        assert mref.path is not None
        d = mref.path
    _check_checkpoint_dir(d)
    return d


def load_policy(
    ref: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = True,
    device: str | torch.device = "cpu",
):
    """Load a Qwen3-VL (dense or MoE) policy and its processor from a checkpoint.

    ``ref``: a local directory, a hub preset name (``qwen3-vl-4b``) or a hub id. Weights are read
    from safetensors only. ``dtype`` None picks bf16 on a capable GPU, float32 on CPU;
    ``attn_implementation`` None uses ``choose_attn_implementation(device)``.
    """
    d = resolve_checkpoint_dir(ref, local_files_only=local_files_only)
    cls = model_class(_check_checkpoint_dir(d))
    if dtype is None:
        dtype = pick_dtype(device, "auto")
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype) if dtype != "auto" else pick_dtype(device, "auto")
    attn = attn_implementation or choose_attn_implementation(str(device))
    try:
        model, info = cls.from_pretrained(
            str(d),
            dtype=dtype,
            attn_implementation=attn,
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            ignore_mismatched_sizes=True,  # reported in `info` and refused by check_loading_info
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"could not load the model from {d}: {type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    check_loading_info(d, info)  # strict: nothing missing, unexpected or mis-shaped is ever random-initialised
    model.to(device)
    model.eval()
    processor = load_processor(d)
    return model, processor


def count_parameters(model) -> dict[str, int]:
    """Parameter counts: total, vision (the vision tower incl. mergers) and text (everything else)."""
    seen: set[int] = set()
    total = vision = 0
    for name, prm in model.named_parameters(remove_duplicate=True):
        if id(prm) in seen:
            continue
        seen.add(id(prm))
        n = prm.numel()
        total += n
        if ".visual." in f".{name}":
            vision += n
    return {"total": total, "vision": vision, "text": total - vision}
