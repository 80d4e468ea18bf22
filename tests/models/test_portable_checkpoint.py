"""A checkpoint prism-lab writes loads in plain transformers (no prism_lab import, no torchvision) and
generates exactly what prism-lab's own loader and rollout engine generate."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from prism_lab.models.loader import build_tiny_policy, load_policy, save_policy
from prism_lab.models.portable import PORTABLE_PROCESSOR_CLASS, VIDEO_CONFIG_FILE
from prism_lab.models.tokenizer import build_tokenizer
from tests.fakes import counting_corpus

#: Run in a fresh interpreter: only transformers, torch, PIL and numpy.
PLAIN = r"""
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
ckpt, out = sys.argv[1], sys.argv[2]
proc = AutoProcessor.from_pretrained(ckpt)
model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
rng = np.random.default_rng(0)
imgs = [Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)) for _ in range(3)]
prompts = [
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many red circles ?"}]}], imgs[:1]),
    ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and here ?"}, {"type": "image"}]}], imgs[1:]),
    ([{"role": "user", "content": [{"type": "text", "text": "what is 2 + 5 ?"}]}], []),
]
res = {"processor": type(proc).__name__, "model": type(model).__name__, "gen": [], "batches": []}
for msgs, ims in prompts:
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    batch = proc(text=[text], images=ims or None, return_tensors="pt")
    res["batches"].append({k: v.tolist() for k, v in batch.items()})
    with torch.no_grad():
        ids = model.generate(**batch, max_new_tokens=12, do_sample=False)
    res["gen"].append(ids[0, batch["input_ids"].shape[1]:].tolist())
res["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("prism_lab", "torchvision"))
json.dump(res, open(out, "w"))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = build_tokenizer(counting_corpus(200), vocab_size=512)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=3)
    return save_policy(model, proc, tmp_path_factory.mktemp("portable") / "model")


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)) for _ in range(3)]


def test_saved_files_name_a_public_processor(saved):
    assert json.loads((saved / "processor_config.json").read_text())["processor_class"] == PORTABLE_PROCESSOR_CLASS
    tok_cfg = json.loads((saved / "tokenizer_config.json").read_text())
    assert tok_cfg["image_token"] == "<|image_pad|>" and "<|im_start|>" in tok_cfg["extra_special_tokens"]
    video = json.loads((saved / VIDEO_CONFIG_FILE).read_text())
    assert video["video_processor_type"] == "Qwen3VLVideoProcessor" and video["merge_size"] == 2


def test_plain_transformers_loads_and_generates_like_prism_lab(saved, tmp_path):
    out = tmp_path / "plain.json"
    proc = subprocess.run([sys.executable, "-c", PLAIN, str(saved), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = json.loads(out.read_text())
    assert plain["processor"] == PORTABLE_PROCESSOR_CLASS
    assert plain["model"] == "Qwen3VLForConditionalGeneration"
    assert plain["modules"] == []  # neither prism_lab nor torchvision was imported

    from prism_lab.rollout import Prompt, build_prompt_inputs, make_engine

    model, processor = load_policy(saved)
    imgs = _images()
    prompts = [
        Prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "how many red circles ?"}]}],
               imgs[:1]),
        Prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and here ?"},
                                             {"type": "image"}]}], imgs[1:]),
        Prompt([{"role": "user", "content": [{"type": "text", "text": "what is 2 + 5 ?"}]}], []),
    ]
    engine = make_engine(model, processor, kind="hf")
    for i, p in enumerate(prompts):
        ours = build_prompt_inputs(processor, [p])
        theirs = plain["batches"][i]
        assert sorted(theirs) == sorted(ours)
        for k, v in ours.items():
            assert torch.equal(torch.tensor(theirs[k], dtype=v.dtype), v), k
        roll = engine.generate([p], n=1, max_new_tokens=12, do_sample=False, temperature=1.0, top_p=1.0)[0]
        eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
                  else [model.generation_config.eos_token_id])
        gen = plain["gen"][i]
        cut = next((j + 1 for j, t in enumerate(gen) if t in eos), len(gen))
        assert roll.token_ids == gen[:cut], i
