"""The final checkpoint's dtype (resources.export_dtype, trainers/checkpoint.py save_final): bf16 exports are bf16 on
disk, say so in config.json and load with plain transformers; `auto` on CPU writes what it always wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor

from prism_lab.config.resources import ResourcesConfig
from prism_lab.models.loader import build_tiny_policy
from prism_lab.models.tokenizer import build_tokenizer
from prism_lab.trainers.checkpoint import save_final
from prism_lab.trainers.distributed import SINGLE
from prism_lab.trainers.precision import resolve_export_dtype
from tests.fakes import counting_corpus

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    return build_tiny_policy("tiny-xs", build_tokenizer(counting_corpus(), vocab_size=400), seed=0)


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(d / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_bf16_export_is_bf16_on_disk_in_config_and_loads_with_plain_transformers(policy, tmp_path):
    model, proc = policy
    out = save_final(model, proc, tmp_path / "bf16", SINGLE, "bf16")
    assert out is not None
    on_disk = _tensors(out)
    assert {t.dtype for t in on_disk.values() if t.is_floating_point()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(model.parameters()).dtype == torch.float32  # the trained model itself is not cast
    loaded, info = AutoModelForImageTextToText.from_pretrained(str(out), dtype="auto", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    theirs = loaded.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(theirs[name], value.to(torch.bfloat16), rtol=0, atol=0, msg=name)
    assert AutoProcessor.from_pretrained(str(out)) is not None


def test_auto_on_cpu_writes_what_an_unspecified_export_writes(policy, tmp_path):
    model, proc = policy
    auto = save_final(model, proc, tmp_path / "auto", SINGLE, "auto")
    plain = save_final(model, proc, tmp_path / "plain", SINGLE)
    assert json.loads((auto / "config.json").read_text())["dtype"] == "float32"
    assert (auto / "config.json").read_bytes() == (plain / "config.json").read_bytes()
    a, p = _tensors(auto), _tensors(plain)
    assert a.keys() == p.keys() and all(torch.equal(a[k], p[k]) and a[k].dtype == torch.float32 for k in a)


def test_resolve_export_dtype():
    assert resolve_export_dtype("auto", "cpu") == torch.float32
    assert resolve_export_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_export_dtype("fp32", "cuda") == torch.float32
    assert resolve_export_dtype("bf16", "cpu") == torch.bfloat16


def test_export_dtype_keeps_earlier_keys_and_the_paper_grid_sets_bf16():
    assert "export_dtype" not in ResourcesConfig(processes=2).model_dump()  # an added field: keys unchanged
    assert ResourcesConfig(export_dtype="bf16").model_dump()["export_dtype"] == "bf16"
    stages = yaml.safe_load((REPO / "experiments" / "paper.yaml").read_text())["stages"]
    for kind in ("sft", "align", "rl"):
        assert ResourcesConfig(**stages[kind]["resources"]).export_dtype == "bf16", kind
