"""Tokenizer, processor, presets, model refs and attention choice (prism_lab.models)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from prism_lab.errors import CheckpointError, ConfigError
from prism_lab.models.attention import (
    choose_attn_implementation,
    pick_device,
    pick_dtype,
)
from prism_lab.models.presets import (
    PRESETS,
    ModelPreset,
    mrope_section_for,
    resolve_model_ref,
)
from prism_lab.models.processor import (
    TinyQwen3VLProcessor,
    build_processor,
    load_processor,
)
from prism_lab.models.tokenizer import FORMAT_TAGS, SPECIAL_TOKENS, build_tokenizer
from prism_lab.prompts import SYSTEM_PROMPT, format_response


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["red", "green", "blue", "circle", "square", "how", "many", "are", "there", "the", "answer", "is", "add"]
    out = [SYSTEM_PROMPT]
    for _ in range(n):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        a = rng.randint(0, 99)
        out.append(f"{q} ? add {rng.randint(0, 9)} .")
        out.append(format_response(f"- a white image with {rng.randint(0, 5)} shapes", f"{q} so {a}", str(a)))
    return out


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(corpus(), vocab_size=512)


def _images(n: int, side: int = 64, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize(
    "text",
    [
        "plain ascii text",
        "  two leading spaces and trailing  ",
        "tabs\tand\nnew\r\nlines",
        "unicode: héllo wörld, 日本語, emoji 🙂🚀, ∑∫√, Ω",
        "numbers 0123456789 and 3.14159 and -42",
        "<caption>\n- a red circle\n</caption>\n<think>\n1+2=3\n</think>\n<answer>\n3\n</answer>",
        "\x00\x01 control chars \x7f",
        "",
    ],
)
def test_tokenizer_lossless_roundtrip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id is None


def test_tokenizer_random_strings_roundtrip(tok):
    rng = random.Random(1)
    alphabet = [chr(c) for c in range(32, 0x2FF)] + ["日", "本", "🙂", "\n", "\t", " "]
    for _ in range(50):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tok.decode(tok.encode(s, add_special_tokens=False)) == s


def test_digits_are_single_tokens(tok):
    ids = tok.encode("1234567890", add_special_tokens=False)
    assert len(ids) == 10
    assert [tok.decode([i]) for i in ids] == list("1234567890")
    ids = tok.encode("answer 42", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids][-2:] == ["4", "2"]


def test_tags_and_special_tokens(tok):
    for tag in FORMAT_TAGS:
        ids = tok.encode(tag, add_special_tokens=False)
        assert len(ids) == 1, tag
    for sp in SPECIAL_TOKENS:
        assert len(tok.encode(sp, add_special_tokens=False)) == 1, sp
    # tags survive skip_special_tokens; chat specials do not
    text = "<|im_start|>assistant\n<answer>7</answer><|im_end|>"
    assert tok.decode(tok.encode(text, add_special_tokens=False), skip_special_tokens=True) == "assistant\n<answer>7</answer>"
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi", add_special_tokens=False)


def test_tokenizer_vocab_size_and_determinism(tmp_path):
    texts = corpus(400)
    a = build_tokenizer(texts, vocab_size=400)
    b = build_tokenizer(texts, vocab_size=400)
    assert len(a) <= 400
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    with pytest.raises(ConfigError):
        build_tokenizer(texts, vocab_size=100)


def test_chat_template(tok):
    msgs = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many ?"}]},
        {"role": "assistant", "content": "<answer>3</answer>"},
    ]
    out = tok.apply_chat_template(msgs, tokenize=False)
    assert out == (
        "<|im_start|>system\nSYS<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>how many ?<|im_end|>\n"
        "<|im_start|>assistant\n<answer>3</answer><|im_end|>\n"
    )
    gen = tok.apply_chat_template(msgs[1:2], tokenize=False, add_generation_prompt=True)
    # no default system prompt is injected
    assert gen == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>how many ?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<|im_start|>user\nhi<|im_end|>\n"
    # assistant-token mask covers the assistant content and its <|im_end|>
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == "<answer>3</answer><|im_end|>"


# ---------------------------------------------------------------- processor


def test_processor_images(tok, tmp_path):
    proc = build_processor(tok)
    assert isinstance(proc, TinyQwen3VLProcessor)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "count ?"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    batch = proc(images=_images(3), text=[text] * 3, return_tensors="pt", padding=True)
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    assert tuple(batch["pixel_values"].shape) == (3 * 16, 3 * 2 * 16 * 16)
    img_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == img_id).sum(dim=1).tolist() == [4, 4, 4]
    assert "mm_token_type_ids" in batch
    # 112 px is rounded up to 128 px: 64 patches, 16 LLM tokens
    b2 = proc(images=_images(1, side=112), text=[text], return_tensors="pt")
    assert b2["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert int((b2["input_ids"] == img_id).sum()) == 16

    proc.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "processor_config.json").read_text())
    assert cfg["processor_class"] == "TinyQwen3VLProcessor"
    from transformers import AutoProcessor

    for loaded in (AutoProcessor.from_pretrained(tmp_path, local_files_only=True), load_processor(tmp_path)):
        assert isinstance(loaded, TinyQwen3VLProcessor)
        again = loaded(images=_images(3), text=[text] * 3, return_tensors="pt", padding=True)
        assert set(again) == set(batch)
        for k in batch:
            assert (again[k] == batch[k]).all(), k


def test_processor_real_checkpoint_layout_fallback(tok, tmp_path):
    """A Qwen3-VL-style directory (Qwen3VLProcessor + video config) loads without torchvision."""
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": tok.chat_template}))
    pre = {
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "size": {"longest_edge": 16777216, "shortest_edge": 4096},
    }
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    video = dict(pre, video_processor_type="Qwen3VLVideoProcessor")
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))
    proc = load_processor(tmp_path)
    assert isinstance(proc, TinyQwen3VLProcessor)
    ref = build_processor(tok)
    text = ref.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], tokenize=False
    )
    assert proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], tokenize=False
    ) == text
    a = proc(images=_images(2), text=[text] * 2, return_tensors="pt")
    b = ref(images=_images(2), text=[text] * 2, return_tensors="pt")
    for k in b:
        assert (a[k] == b[k]).all(), k


# ---------------------------------------------------------------- presets


def test_presets_registered_and_consistent():
    assert {"tiny-xs", "tiny-s", "tiny-m", "qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b"} <= set(PRESETS.names())
    for name in PRESETS.names():
        p = PRESETS.get(name)
        assert p.name == name
        assert sum(p.mrope_section) == p.head_dim // 2
        assert all(0 <= i < p.vision_depth for i in p.deepstack_visual_indexes)
        assert p.vision_out_hidden_size == p.hidden_size
        if p.family == "hub":
            assert p.hub_id.startswith("Qwen/Qwen3-VL-")
        else:
            assert p.hub_id is None
    assert PRESETS.get("qwen3-vl-4b").hub_id == "Qwen/Qwen3-VL-4B-Instruct"
    with pytest.raises(Exception):
        PRESETS.get("tiny-xs").hidden_size = 3  # frozen


def test_mrope_section_for():
    assert mrope_section_for(128) == [24, 20, 20]
    for hd in (8, 16, 32, 64, 96, 128, 256):
        sec = mrope_section_for(hd)
        assert sum(sec) == hd // 2 and min(sec) >= 1


def test_preset_validation():
    base = dict(PRESETS.get("tiny-xs").__dict__)
    with pytest.raises(ValueError):
        ModelPreset(**dict(base, deepstack_visual_indexes=(5,)))
    with pytest.raises(ValueError):
        ModelPreset(**dict(base, family="hub"))


def test_resolve_model_ref(tmp_path, monkeypatch):
    r = resolve_model_ref("tiny-s")
    assert r.kind == "preset" and r.preset is PRESETS.get("tiny-s")
    r = resolve_model_ref("qwen3-vl-8b")
    assert r.kind == "preset" and r.preset.hub_id == "Qwen/Qwen3-VL-8B-Instruct"

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    r = resolve_model_ref(str(ckpt))
    assert r.kind == "local" and r.path == ckpt.resolve()
    assert resolve_model_ref(ckpt).kind == "local"
    monkeypatch.chdir(tmp_path)
    assert resolve_model_ref("ckpt").kind == "local"

    r = resolve_model_ref("Qwen/Qwen3-VL-4B-Instruct")
    assert r.kind == "hub" and r.hub_id == "Qwen/Qwen3-VL-4B-Instruct"

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        resolve_model_ref(str(empty))
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model_ref(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="unknown model reference"):
        resolve_model_ref("not-a-preset")


# ---------------------------------------------------------------- attention / device / dtype


def test_attention_and_dtype_on_cpu():
    import torch

    assert choose_attn_implementation("cpu") == "sdpa"
    if not torch.cuda.is_available():
        assert choose_attn_implementation() == "sdpa"
        assert pick_device() == "cpu"
    assert pick_dtype("cpu", "auto") == torch.float32
    assert pick_dtype("cpu", False) == torch.float32
    assert pick_dtype("cpu", True) == torch.bfloat16
    with pytest.raises(ConfigError):
        pick_dtype("cpu", "yes")
