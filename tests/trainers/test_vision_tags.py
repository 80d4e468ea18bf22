"""The vision phase's targets and loss, against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from prism_lab.data.sft_json import SFTExample
from prism_lab.errors import DataError
from prism_lab.trainers.vision_tags import TagHead, count_targets, scene_kinds, tag_loss


def _obj(colour, shape):
    return {"colour": colour, "shape": shape, "cx": 10, "cy": 10, "size": 9}


def _ex(scene, row=0):
    return SFTExample(messages=[], images=[Path("x.png")], meta={"scene": scene}, row=row, source="caption.json")


def test_kinds_are_every_drawn_colour_and_shape_pair_sorted():
    exs = [_ex([_obj("red", "square"), _obj("blue", "circle")]), _ex([_obj("red", "circle")])]
    assert scene_kinds(exs) == [("blue", "circle"), ("red", "circle"), ("red", "square")]


def test_counts_per_kind_are_capped():
    kinds = [("blue", "circle"), ("red", "circle"), ("red", "square")]
    scene = [_obj("red", "circle")] * 3 + [_obj("red", "square")]
    assert count_targets(scene, kinds, max_count=6) == [0, 3, 1]
    assert count_targets(scene, kinds, max_count=2) == [0, 2, 1]


def test_a_row_without_a_scene_is_refused_naming_file_and_row():
    with pytest.raises(DataError, match=r"caption\.json row 7: meta\.scene: expected the list of drawn objects"):
        scene_kinds([_ex(None, row=7)])


def test_tag_loss_is_the_mean_cross_entropy_over_images_and_kinds():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])  # 1 image, 2 kinds, counts 0..1
    targets = torch.tensor([[1, 0]])
    # kind 0: uniform -> -log(1/2); kind 1: p(0) = 3/4 -> -log(3/4)
    want = (math.log(2.0) - math.log(0.75)) / 2
    assert float(tag_loss(logits, targets)) == pytest.approx(want, abs=1e-6)


def test_the_head_pools_each_image_s_tokens():
    head = TagHead(hidden=4, n_kinds=3, max_count=2)
    feats = torch.randn(8, 4)  # 2 images x 4 tokens
    out = head(feats, 2)
    assert out.shape == (2, 3, 3)
    alone = head(feats[4:], 1)
    assert torch.allclose(out[1], alone[0], atol=1e-6)
    shuffled = head(feats[[1, 0, 3, 2, 4, 5, 6, 7]], 2)  # token order inside an image does not matter
    assert torch.allclose(out, shuffled, atol=1e-6)
