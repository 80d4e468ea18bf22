"""The strict weight check (prism_lab/models/weight_check.py): safetensors headers written by hand against a
tiny Qwen3-VL built on the meta device from a config.json. No weights are loaded anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism_lab.errors import CheckpointError
from prism_lab.models.weight_check import verify_weights

_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "F8_E4M3": 1}


def tiny_config(*, tied: bool = True, moe: bool = False) -> dict:
    from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

    text = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=8, tie_word_embeddings=tied,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                 "mrope_interleaved": True})
    vision = dict(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=16, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16, deepstack_visual_indexes=[0])
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, decoder_sparse_step=1)
        return Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied).to_dict()
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=tied).to_dict()


def model_tensors(config: dict) -> dict[str, list[int]]:
    """name -> shape of what save_pretrained writes for ``config`` (tied lm_head left out)."""
    import torch
    from transformers import AutoConfig

    from prism_lab.models.checkpoint import model_class

    cfg = AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = model_class(cfg.model_type)(cfg)
    out = {k: list(v.shape) for k, v in model.state_dict().items()}
    if cfg.get_text_config().tie_word_embeddings:
        out.pop("lm_head.weight")
    return out


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file (8-byte header length, JSON header, zero bytes) with these names, dtypes, shapes."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = _BYTES[dtype]
        for x in shape:
            n *= x
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + bytes(offset))


def checkpoint(d: Path, config: dict, tensors: dict[str, list[int]], dtype: str = "F32") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    write_safetensors(d / "model.safetensors", {k: (dtype, s) for k, s in tensors.items()})
    return d


@pytest.fixture(scope="module")
def tied() -> tuple[dict, dict[str, list[int]]]:
    cfg = tiny_config(tied=True)
    return cfg, model_tensors(cfg)


def refused(d: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        verify_weights(d)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_exact_checkpoint_passes_and_tied_lm_head_may_be_absent(tied, tmp_path):
    cfg, tensors = tied
    assert "lm_head.weight" not in tensors
    verify_weights(checkpoint(tmp_path / "a", cfg, tensors))
    verify_weights(checkpoint(tmp_path / "b", cfg, {**tensors, "lm_head.weight": [64, 16]}))  # tied copy stored too


def test_untied_model_needs_its_lm_head(tmp_path):
    cfg = tiny_config(tied=False)
    tensors = model_tensors(cfg)
    verify_weights(checkpoint(tmp_path / "ok", cfg, tensors))
    del tensors["lm_head.weight"]
    refused(checkpoint(tmp_path / "bad", cfg, tensors), "missing lm_head.weight")


def test_missing_unexpected_and_misshaped_are_named(tied, tmp_path):
    cfg, tensors = tied
    name = "model.language_model.layers.0.mlp.up_proj.weight"
    less = {k: v for k, v in tensors.items() if k != name}
    refused(checkpoint(tmp_path / "missing", cfg, less), "do not fit", "missing", name)
    refused(checkpoint(tmp_path / "extra", cfg, {**tensors, "model.extra.weight": [2]}), "unexpected model.extra.weight")
    refused(checkpoint(tmp_path / "shape", cfg, {**tensors, name: [16, 16]}), "1 mis-shaped", "(16, 16) vs model (32, 16)")


def test_dtypes_any_float_passes_others_refused(tied, tmp_path):
    cfg, tensors = tied  # the config says float32
    verify_weights(checkpoint(tmp_path / "bf16", cfg, tensors, dtype="BF16"))
    verify_weights(checkpoint(tmp_path / "f16", cfg, tensors, dtype="F16"))
    refused(checkpoint(tmp_path / "int", cfg, tensors, dtype="I32"), "dtype", "I32")
    refused(checkpoint(tmp_path / "fp8", cfg, tensors, dtype="F8_E4M3"), "dtype", "F8_E4M3")


def test_sharded_checkpoint_with_an_index(tied, tmp_path):
    cfg, tensors = tied
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, part in shards.items():
        write_safetensors(d / shard, {k: ("BF16", tensors[k]) for k in part})
    weight_map = {k: shard for shard, part in shards.items() for k in part}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    verify_weights(d)
    first = names[0]  # the index names the wrong shard for one tensor
    weight_map[first] = "model-00002-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    refused(d, "model.safetensors.index.json", first, "not in the shard it names")


def test_shard_missing_a_tensor_is_missing(tied, tmp_path):
    cfg, tensors = tied
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    names = sorted(tensors)
    write_safetensors(d / "a.safetensors", {k: ("F32", tensors[k]) for k in names[:10]})
    write_safetensors(d / "b.safetensors", {k: ("F32", tensors[k]) for k in names[11:]})
    refused(d, "missing", names[10])


def test_name_layouts_transformers_maps_and_one_it_does_not(tied, tmp_path):
    cfg, tensors = tied
    bare = {k.removeprefix("model."): v for k, v in tensors.items()}  # a Qwen3VLModel checkpoint
    verify_weights(checkpoint(tmp_path / "bare", cfg, bare))
    legacy = {k.replace("model.language_model.", "model.language_model.model.", 1): v for k, v in tensors.items()}
    verify_weights(checkpoint(tmp_path / "legacy", cfg, legacy))
    old = {k.replace("model.language_model.", "model.", 1): v for k, v in tensors.items()}
    refused(checkpoint(tmp_path / "old", cfg, old), "unexpected model.embed_tokens.weight", "pre-transformers-5 layout")


def test_moe_experts_may_be_stored_transposed(tmp_path):
    cfg = tiny_config(moe=True)
    tensors = model_tensors(cfg)
    verify_weights(checkpoint(tmp_path / "as-model", cfg, tensors))
    swapped = {k: ([*v[:-2], v[-1], v[-2]] if ".mlp.experts." in k else v) for k, v in tensors.items()}
    assert swapped != tensors
    verify_weights(checkpoint(tmp_path / "swapped", cfg, swapped))
    name = next(k for k in tensors if k.endswith("mlp.experts.down_proj"))
    refused(checkpoint(tmp_path / "bad", cfg, {**tensors, name: [4, 3, 3]}), "mis-shaped", name)


def test_a_config_transformers_refuses_is_not_blamed_on_the_weights(tied, tmp_path):
    cfg, tensors = tied
    bad = json.loads(json.dumps(cfg))
    bad["text_config"]["hidden_act"] = "no-such-activation"
    msg = refused(checkpoint(tmp_path / "cfg", bad, tensors), "could not check the weights", "config.json",
                  "no-such-activation")
    assert "do not fit" not in msg
