"""Tiny policy build / train / generate / save / load, and checkpoint errors (prism_lab.models.loader)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from prism_lab.errors import CheckpointError, ConfigError
from prism_lab.models.loader import (
    build_tiny_policy,
    count_parameters,
    load_policy,
    save_policy,
)
from prism_lab.models.processor import TinyQwen3VLProcessor
from prism_lab.models.tokenizer import build_tokenizer
from tests.fakes import counting_corpus


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(counting_corpus(200), vocab_size=512)


@pytest.fixture(scope="module")
def policy(tok):
    return build_tiny_policy("tiny-xs", tok, seed=0)


@pytest.fixture(scope="module")
def saved(policy, tmp_path_factory):
    model, proc = policy
    return save_policy(model, proc, tmp_path_factory.mktemp("ckpt") / "policy")


def _images(n: int, side: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def _msgs(q: str, answer: str | None = None) -> list[dict]:
    m = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    if answer is not None:
        m.append({"role": "assistant", "content": answer})
    return m


def _train_batch(proc, n: int = 4):
    texts = [proc.apply_chat_template(_msgs("how many red circles ?" + " ?" * i, f"<answer>{i}</answer>"), tokenize=False) for i in range(n)]
    return proc(images=_images(n), text=texts, return_tensors="pt", padding=True)


def test_build_tiny_policy_config(policy, tok):
    model, proc = policy
    cfg = model.config
    assert cfg.model_type == "qwen3_vl"
    assert cfg.text_config.vocab_size == len(tok)
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == cfg.text_config.head_dim // 2
    gc = model.generation_config
    assert gc.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert gc.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert gc.bos_token_id is None
    assert cfg._attn_implementation == "sdpa"
    assert isinstance(proc, TinyQwen3VLProcessor)


def test_seed_determinism(tok):
    a, _ = build_tiny_policy("tiny-xs", tok, seed=3)
    b, _ = build_tiny_policy("tiny-xs", tok, seed=3)
    c, _ = build_tiny_policy("tiny-xs", tok, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_build_rejects_hub_and_unknown_presets(tok):
    with pytest.raises(ConfigError, match="hub model"):
        build_tiny_policy("qwen3-vl-2b", tok, seed=0)
    with pytest.raises(ConfigError, match="unknown model preset"):
        build_tiny_policy("tiny-huge", tok, seed=0)


def test_forward_backward(tok):
    model, proc = build_tiny_policy("tiny-xs", tok, seed=1)
    model.train()
    batch = _train_batch(proc)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    out = model(**batch, labels=labels)
    assert torch.isfinite(out.loss)
    assert abs(out.loss.item() - np.log(len(tok))) < 1.5  # near uniform at init
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_generate_with_images_left_padding(policy):
    model, proc = policy
    texts = [
        proc.apply_chat_template(_msgs(q), tokenize=False, add_generation_prompt=True)
        for q in ["how many ?", "how many red circles are there in the image ?", "count"]
    ]
    batch = proc(images=_images(3), text=texts, return_tensors="pt", padding=True, padding_side="left")
    assert (batch["attention_mask"][:, -1] == 1).all()
    assert (batch["attention_mask"][:, 0] == 0).any()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=True)
    assert out.shape == (3, batch["input_ids"].shape[1] + 6)
    # greedy is deterministic and equals per-sample unpadded greedy
    with torch.no_grad():
        g = model.generate(**batch, max_new_tokens=5, do_sample=False)
        single = proc(images=_images(3)[1:2], text=texts[1:2], return_tensors="pt")
        g1 = model.generate(**single, max_new_tokens=5, do_sample=False)
    T = batch["input_ids"].shape[1]
    new_b = g[1, T:].tolist()
    new_1 = g1[0, single["input_ids"].shape[1]:].tolist()
    assert new_b[: len(new_1)] == new_1


def test_save_layout(saved):
    names = {p.name for p in saved.iterdir()}
    for f in ("model.safetensors", "config.json", "generation_config.json", "processor_config.json",
              "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert f in names, f
    assert not any(n.endswith((".bin", ".pt")) for n in names)
    gen = json.loads((saved / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] == 0


def test_save_load_roundtrip_identical(policy, saved):
    model, proc = policy
    model2, proc2 = load_policy(saved)
    assert isinstance(proc2, TinyQwen3VLProcessor)
    assert model2.config._attn_implementation == "sdpa"
    assert model2.dtype == torch.float32
    assert model2.generation_config.eos_token_id == model.generation_config.eos_token_id
    b1 = _train_batch(proc)
    b2 = _train_batch(proc2)
    assert set(b1) == set(b2)
    for k in b1:
        assert torch.equal(b1[k], b2[k]), k
    model.eval()
    with torch.no_grad():
        l1 = model(**b1).logits
        l2 = model2(**b2).logits
    assert (l1 - l2).abs().max().item() == 0.0
    # by str path too
    m3, _ = load_policy(str(saved))
    assert type(m3).__name__ == "Qwen3VLForConditionalGeneration"


def test_count_parameters(tok):
    model, _ = build_tiny_policy("tiny-s", tok, seed=0)
    c = count_parameters(model)
    assert c["total"] == c["vision"] + c["text"] == sum(p.numel() for p in model.parameters())
    assert 0.65e6 < c["total"] < 0.9e6  # ~0.77M (h128 L2 v64x2, 8 px patches; docs/cpu_notes.md §4, §9)
    assert 0.25e6 < c["vision"] < 0.4e6


# ---------------------------------------------------------------- load errors


def test_load_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(str(tmp_path / "nope"))


def test_load_no_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_policy(tmp_path)


def test_load_no_weights(saved, tmp_path):
    d = tmp_path / "noweights"
    shutil.copytree(saved, d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="no safetensors weights.*pytorch_model.bin"):
        load_policy(d)


def test_load_wrong_model_type(saved, tmp_path):
    d = tmp_path / "wrongtype"
    shutil.copytree(saved, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"expected a Qwen3-VL checkpoint \(model_type qwen3_vl or qwen3_vl_moe\)"):
        load_policy(d)


def test_load_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not available offline.*local directory"):
        load_policy("prism-lab-tests/no-such-model", local_files_only=True)


def test_load_tiny_preset_name_is_not_a_checkpoint():
    with pytest.raises(CheckpointError, match="build_tiny_policy"):
        load_policy("tiny-xs")


def test_load_moe_checkpoint(tok, tmp_path):
    """load_policy picks Qwen3VLMoeForConditionalGeneration from config.model_type."""
    from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

    from prism_lab.models.loader import tiny_config
    from prism_lab.models.processor import build_processor

    c = tiny_config("tiny-xs", tok).to_dict()
    text = {k: v for k, v in c["text_config"].items() if k != "model_type"}
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, decoder_sparse_step=1)
    vision = {k: v for k, v in c["vision_config"].items() if k != "model_type"}
    ids = {k: c[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    torch.manual_seed(0)
    moe = Qwen3VLMoeForConditionalGeneration(Qwen3VLMoeConfig(text_config=text, vision_config=vision, **ids))
    d = save_policy(moe, build_processor(tok), tmp_path / "moe")
    model, proc = load_policy(d)
    assert type(model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert isinstance(proc, TinyQwen3VLProcessor)
    sd1, sd2 = moe.state_dict(), model.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_tiny_vision_tower_distinguishes_images():
    """A from-scratch tiny vision tower must not encode every image alike (position table at N(0, 0.02^2))."""
    from PIL import Image, ImageDraw

    from prism_lab.models import build_tiny_policy, build_tokenizer

    tok = build_tokenizer(["a red circle", "two blue squares", "0123456789"], vocab_size=300)
    model, proc = build_tiny_policy("tiny-s", tok, seed=0)
    assert model.model.visual.pos_embed.weight.std().item() < 0.05
    images = []
    for i in range(4):
        im = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(im).ellipse((4 + 10 * i, 8, 14 + 10 * i, 18), fill=("red", "blue", "green", "black")[i])
        images.append(im)
    batch = proc.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        feats = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    feats = feats.view(4, -1, feats.shape[-1])
    spread = feats.std(0).mean() / feats.abs().mean()
    assert spread > 0.1, float(spread)
