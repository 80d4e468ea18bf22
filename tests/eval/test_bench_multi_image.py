"""Benchmark rows shaped like VLMEvalKit's official MMMU TSVs: several images per row (a list literal in
`image`, names in `image_path`, `<image k>` tags in the question), rows without an image, and the whole
file fed to a real tiny Qwen3-VL through the built-in backend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from prism_lab.data.bench_tsv import read_benchmark_tsv
from prism_lab.data.images import encode_png, png_to_base64
from prism_lab.errors import DataError
from prism_lab.eval.benchmarks import BenchmarkSpec
from prism_lab.eval.builtin import build_prompt, user_content
from prism_lab.prompts import Prompting


def _b64(w: int, h: int, value: int) -> str:
    return png_to_base64(encode_png(Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8))))


SIZES = [(32, 32), (64, 32), (32, 64)]


def _mmmu_tsv(path, *, with_noimg: bool = True):
    imgs = [_b64(w, h, 40 * (i + 1)) for i, (w, h) in enumerate(SIZES)]
    rows = [
        {"index": 1, "question": "Compare <image 1> with <image 2>. Which is wider?", "A": "first", "B": "second",
         "C": "", "D": "", "answer": "B", "image": str(imgs[:2]), "image_path": str(["1--1.png", "1--2.png"]),
         "category": "Art", "split": "validation"},
        {"index": 2, "question": "What colour is shown?", "A": "grey", "B": "red", "C": "", "D": "", "answer": "A",
         "image": imgs[2], "image_path": "2.png", "category": "Art", "split": "validation"},
        {"index": 3, "question": "Order: <image 3>, then <image 1>.", "A": "yes", "B": "no", "C": "", "D": "",
         "answer": "A", "image": str(imgs), "image_path": str(["3--1.png", "3--2.png", "3--3.png"]),
         "category": "Math", "split": "dev"},
    ]
    if with_noimg:
        rows.append({"index": 4, "question": "What is 2 + 2?", "A": "4", "B": "5", "C": "", "D": "", "answer": "A",
                     "image": "", "image_path": "", "category": "Math", "split": "dev"})
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_multi_image_rows_keep_their_images_in_order(tmp_path):
    skipped: list = []
    items = read_benchmark_tsv(_mmmu_tsv(tmp_path / "MMMU_DEV_VAL.tsv"), skipped=skipped)
    assert [it.index for it in items] == [1, 2, 3] and skipped == [4]  # VLMEvalKit's skip_noimg
    assert [im.size for im in items[0].images] == SIZES[:2]
    assert [im.size for im in items[1].images] == [SIZES[2]]
    assert [im.size for im in items[2].images] == SIZES
    assert items[0].extra["split"] == "validation" and items[0].options == {"A": "first", "B": "second"}


def test_no_image_rows_are_kept_on_request_as_text_only(tmp_path):
    items = read_benchmark_tsv(_mmmu_tsv(tmp_path / "t.tsv"), keep_noimg=True)
    assert [it.index for it in items] == [1, 2, 3, 4]
    assert items[3].images == []
    with pytest.raises(DataError, match="has no image"):
        items[3].image


def test_broken_image_list_names_row_and_field(tmp_path):
    p = tmp_path / "bad.tsv"
    pd.DataFrame([{"index": 1, "question": "q", "answer": "x", "image": "['abc', 3]"}]).to_csv(p, sep="\t", index=False)
    with pytest.raises(DataError, match=r"row 0 \(index 1\): field 'image': expected a non-empty list literal"):
        read_benchmark_tsv(p)
    bad64 = str([_b64(8, 8, 0), "@@notbase64@@" * 10])
    pd.DataFrame([{"index": 1, "question": "q", "answer": "x", "image": bad64}]).to_csv(p, sep="\t", index=False)
    with pytest.raises(DataError, match=r"field 'image'\[1\]"):
        read_benchmark_tsv(p)


def test_image_tags_interleave_images_like_split_mmmu():
    content, order = user_content("Compare <image 1> with <image 2>. Which?", 2)
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
    assert content[0]["text"] == "Compare " and content[2]["text"] == " with " and order == [0, 1]
    content, order = user_content("Order: <image 3>, then <image 1>.", 3)
    assert order == [2, 0]  # tag order; image 2 is never named, so not shown
    content, order = user_content("No tags here.", 2)
    assert [c["type"] for c in content] == ["image", "image", "text"] and order == [0, 1]
    content, order = user_content("Text only.", 0)
    assert content == [{"type": "text", "text": "Text only."}] and order == []


def test_builtin_backend_feeds_every_image_to_the_model(tmp_path):
    from prism_lab.eval.builtin import BuiltinBackend
    from prism_lab.eval.backends import GenerationSettings
    from prism_lab.models.loader import build_tiny_policy, save_policy
    from prism_lab.models.tokenizer import build_tokenizer
    from tests.fakes import counting_corpus

    spec = BenchmarkSpec(name="MMMU_local", kind="mcq", file="t.tsv", source="synth", max_new_tokens=4,
                         do_sample=False, temperature=0.0, top_p=1.0, keep_noimg=True)
    items = read_benchmark_tsv(_mmmu_tsv(tmp_path / "t.tsv"), keep_noimg=True)
    prompts = [build_prompt(spec, it, Prompting(system_prompt=False)) for it in items]
    assert [[im.size for im in p.images] for p in prompts] == [SIZES[:2], [SIZES[2]], [SIZES[2], SIZES[0]], []]

    tok = build_tokenizer(counting_corpus(100), vocab_size=400)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    ckpt = save_policy(model, proc, tmp_path / "ckpt")
    backend = BuiltinBackend(batch_size=4, prompting=Prompting(system_prompt=False), progress=False)
    from prism_lab.rollout import build_prompt_inputs

    engine = backend.engine(ckpt)
    batch = build_prompt_inputs(engine.processor, prompts)
    # 2 + 1 + 2 images reach the model; each 32x32 image is 1 merged token, 64-wide ones 2
    assert batch["image_grid_thw"].shape[0] == 5
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_id).sum(dim=1).tolist() == [1 + 2, 2, 2 + 1, 0]
    res = backend.evaluate(ckpt, spec, items, GenerationSettings(max_new_tokens=4, do_sample=False, temperature=0.0,
                                                                 top_p=1.0))
    assert [r["index"] for r in res.rows] == [1, 2, 3, 4] and res.metrics["n"] == 4
