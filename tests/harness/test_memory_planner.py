"""The memory planner: parameter counts on the meta device, the byte arithmetic against hand-computed
values, `sweep plan --resources`, and `sweep run` refusing a stage that cannot fit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prism_lab.harness import memory as mem
from tests.conftest import REPO, cli_env, run_cli


@pytest.mark.parametrize("ref, published", [("qwen3-vl-2b", 2.128e9), ("qwen3-vl-4b", 4.438e9), ("qwen3-vl-8b", 8.767e9)])
def test_meta_device_parameter_counts_match_the_published_sizes(ref, published):
    from prism_lab.models.footprint import model_shape

    shape = model_shape(ref)
    assert abs(shape.params - published) / published < 5e-4  # the model cards round to 4 digits
    assert shape.root_params + shape.block_params <= shape.params
    assert shape.vocab == 151_936


def test_hub_id_of_a_preset_counts_like_the_preset():
    from prism_lab.models.footprint import model_shape

    assert model_shape("Qwen/Qwen3-VL-4B-Instruct").params == model_shape("qwen3-vl-4b").params


SHAPE = {"params": 1000, "block_params": 100, "root_params": 200, "vision_params": 0, "hidden": 4, "layers": 2,
         "intermediate": 8, "q_dim": 4, "kv_dim": 2, "vocab": 10, "vision_hidden": 2, "vision_layers": 1,
         "vision_intermediate": 4, "image_tokens": 3}


def test_byte_counts_by_hand():
    fp32 = mem.Precision(4, 4, 4)
    bf16 = mem.Precision(2, 4, 4)
    # sharded over 4 ranks: 250 params x 4 bytes each for weights and grads, x2 for Adam's moments
    assert mem.sharded_state_bytes(1000, 4, fp32) == {"weights": 1000, "grads": 1000, "optimizer": 2000}
    assert mem.gathered_bytes(SHAPE, 1, fp32) == 0  # one process, no dtype change: nothing gathered
    assert mem.gathered_bytes(SHAPE, 4, bf16) == (200 + 2 * 100) * 2 + 100 * 4  # root + 2 blocks, one grad
    # per layer and token: 6h + 2q + 2kv + 4i = 24 + 8 + 4 + 32 = 68 values
    assert mem.layer_activation_bytes_per_token(SHAPE, 2) == 136
    # 5 tokens, 1 image of 3 patches, no checkpointing: 2 layers x 5 x 136 + 1 layer x 3 x (16 + 8) x 2
    assert mem.activation_bytes(SHAPE, 5, 1, 2, False) == 2 * 5 * 136 + 3 * 24 * 2
    # checkpointing: each layer keeps its input (h), plus one layer recomputed
    assert mem.activation_bytes(SHAPE, 5, 1, 2, True) == 2 * 5 * 4 * 2 + 5 * 136 + (1 * 3 * 2 * 2 + 3 * 48)
    assert mem.logits_bytes(SHAPE, 5, 2) == 5 * 10 * (2 + 3 * 4)  # bf16 logits + the backward's 3 fp32 buffers
    assert mem.kv_cache_bytes(SHAPE, 3, 7, 2) == 3 * 7 * 2 * 2 * 2 * 2


def test_estimate_shards_with_processes_and_offload_moves_state_to_the_host():
    cfg = {"batch_size": 8, "max_length": 5, "precision": "bf16",
           "resources": {"processes": 1, "param_dtype": "bf16"}}
    one = mem.estimate("sft", cfg, {"policy": SHAPE}, on_gpu=True)
    eight = mem.estimate("sft", {**cfg, "resources": {"processes": 8, "param_dtype": "bf16"}}, {"policy": SHAPE},
                         on_gpu=True)
    assert one.components["policy/weights"] == 8 * eight.components["policy/weights"] == 4000
    assert eight.components["policy/activations"] < one.components["policy/activations"]  # 1 row per rank, not 8
    off = mem.estimate("sft", {**cfg, "resources": {"processes": 8, "param_dtype": "bf16", "offload": True}},
                       {"policy": SHAPE}, on_gpu=True)
    assert off.components["policy/optimizer"] == 0 and off.host == 4 * 1000 / 8 * 4
    assert off.peak < eight.peak


def test_planning_memory_imports_no_torch():
    code = ("import sys; import prism_lab.harness.memory, prism_lab.harness.devices, prism_lab.harness.executors.placement; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=cli_env())


def test_sweep_plan_resources_for_the_paper_grid():
    res = run_cli("sweep", "plan", "experiments/paper.yaml", "--resources", "--format", "json", timeout=600)
    assert res.returncode == 0, res.stderr
    recs = json.loads(res.stdout)
    assert {r["kind"] for r in recs} == {"sft", "disc_warmup", "align", "rl"}
    sft4 = next(r for r in recs if r["label"] == "sft size=4b seed=0")
    assert sft4["resources"]["processes"] == 8 and abs(sft4["params"]["policy"] - 4.438e9) < 1e7
    assert sft4["fits"] is True and 0 < sft4["peak_gb"] < 80
    # the loss backward's fp32 [tokens x vocab] buffers: 2 rows x 8192 tokens x 151,936 x (2 + 3 x 4) bytes
    assert sft4["policy/loss_buffers_gb"] == pytest.approx(34.85, abs=0.01)
    rl4 = next(r for r in recs if r["label"] == "rl size=4b seed=0 algorithm=grpo alignment=none")
    assert rl4["generation/vllm_gb"] == 48.0 and rl4["peak_gb"] >= 48.0  # the colocated engine sleeps: phases take turns
    assert rl4["peak_gb"] < 48.0 + rl4["policy/loss_buffers_gb"]
    sft8 = next(r for r in recs if r["label"] == "sft size=8b seed=0")
    assert 270 < sft8["host_node_gb"] < 300  # 8 ranks each loading the fp32 8B model


def test_sweep_run_refuses_a_stage_that_cannot_fit(tmp_path):
    grid = tmp_path / "big.yaml"
    grid.write_text(f"extends: {REPO / 'experiments' / 'smoke.yaml'}\nname: big\nmodels: {{4b: qwen3-vl-2b}}\n"
                    "stages:\n  sft:\n    resources: {memory_gb: 4}\n")
    root = tmp_path / "root"
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", timeout=600)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage run base size=4b" in lines[0] and "GB per device" in lines[0]
    assert not (root / "ledger.sqlite").exists()
