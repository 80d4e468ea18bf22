"""The planner counts what runs: each term of harness/memory_terms.py and the phases of
harness/memory.estimate against hand-computed bytes on a toy shape (no model is built; no torch)."""

from __future__ import annotations

import pytest

from prism_lab.harness import memory as mem
from prism_lab.harness import memory_terms as terms
from prism_lab.harness.memory_fit import host_fits, planner_config

# vocab 10, hidden 4, 2 layers, intermediate 8, q 4, kv 2; per layer and token 68 values (136 bytes in bf16);
# one image = 3 vision tokens of (8 x 2 + 2 x 4) = 24 values (48 bytes) in the single vision layer
SHAPE = {"params": 1000, "block_params": 100, "root_params": 200, "vision_params": 0, "hidden": 4, "layers": 2,
         "intermediate": 8, "q_dim": 4, "kv_dim": 2, "vocab": 10, "vision_hidden": 2, "vision_layers": 1,
         "vision_intermediate": 4, "image_tokens": 3}
BF16_GPU = {"processes": 1, "param_dtype": "bf16"}  # compute 2 bytes, reduce and master 4
RESIDENT = 4000 + 4000 + 8000  # fp32 weights, grads and two AdamW moments of 1000 parameters
GATHERED = (200 + 2 * 100) * 2 + 100 * 4  # root + 2 blocks in bf16, one block's fp32 gradient


def test_terms_by_hand():
    assert terms.micro_batch_tokens(None, 3, 5) == 15 and terms.micro_batch_tokens(10240, 3, 5) == 10240
    # bf16 logits + 3 fp32 [tokens x vocab] buffers; the no-grad recompute keeps 2
    assert terms.loss_buffer_bytes(7, 10, 2) == 7 * 10 * (2 + 3 * 4)
    assert terms.recompute_buffer_bytes(7, 10, 2) == 7 * 10 * (2 + 2 * 4)
    # the paper's SFT micro-batch on one of 8 ranks: 2 rows x 8192 tokens x 151,936 entries x 14 bytes
    assert terms.loss_buffer_bytes(2 * 8192, 151_936, 2) / 1e9 == pytest.approx(34.85, abs=0.01)
    # DAPO: 32 prompts x 3 per generation batch over 8 ranks, 16 samples each
    assert terms.rollout_sequences(32, 8, 16, 3.0) == 12 * 16
    assert terms.rollout_sequences(32, 8, 16) == 4 * 16
    assert terms.rollout_sequences(4, 4, 16, 1.0, batch_size=64) == 16  # one prompt per rank, 64 per call
    assert terms.rollout_sequences(8, 1, 16, 1.0, batch_size=64) == 4 * 16  # 64 // 16 prompts per call
    assert terms.phase_peak(48.0, 27.0, engine_sleeps=False) == 75.0
    assert terms.phase_peak(48.0, 27.0, engine_sleeps=True) == 48.0
    # 8 rollouts of 2 prompts over 2 ranks: 4 students (prompt before caption and before cot + the
    # response) and 1 teacher prompt (caption and cot of up to a response each)
    assert terms.disc_graph_tokens(8, 2, 2, 3, 2) == (4 * (2 * 3 + 2) + 2 * 1 * (3 + 2), 2 * (4 + 1))
    # the 8B policy loaded in fp32 by each of 8 ranks, beside 0.5 GB of runtime each and the launcher
    node = terms.host_node_bytes(8, terms.host_load_bytes([8_767_000_000]), 17.5e9, 0.5e9, 0.3e9)
    assert node == 8 * (4 * 8_767_000_000 + 0.5e9) + 0.3e9


def test_sft_counts_the_loss_backward_buffers():
    cfg = {"batch_size": 2, "max_length": 5, "precision": "bf16", "resources": BF16_GPU}
    est = mem.estimate("sft", cfg, {"policy": SHAPE}, on_gpu=True)
    act = 2 * 10 * 136 + 2 * 3 * 48  # 10 tokens through 2 layers, 2 images
    loss = 10 * 10 * (2 + 12)
    assert est.components["policy/loss_buffers"] == loss
    assert est.peak == RESIDENT + GATHERED + act + loss
    assert est.host_node == 1000 * 4 + mem.PROCESS_RUNTIME_BYTES  # one rank loading the fp32 model


def rl_cfg(**kw):
    return {"prompts_per_step": 2, "n": 2, "max_prompt_length": 3, "max_new_tokens": 2, "micro_batch_size": 1,
            "update_token_budget": 8, "log_prob_token_budget": 12, "precision": "bf16", "resources": BF16_GPU, **kw}


# token budget 8: 1 image (8 // 5 rows); bf16 logits and their gradient + 3 fp32 buffers of one (short) chunk
UPDATE = GATHERED + (2 * 8 * 136 + 1 * 3 * 48) + 8 * 10 * (2 * 2 + 12)
RECOMPUTE = GATHERED + 12 * 136 + 12 * 10 * 10  # one layer at a time, bf16 logits + 2 fp32 buffers


def test_rl_phases_take_turns_while_the_colocated_vllm_sleeps(monkeypatch):
    est = mem.estimate("rl", rl_cfg(rollout_engine="vllm"), {"policy": SHAPE}, on_gpu=True, device_bytes=100_000)
    assert est.components["policy/recompute_buffers"] == 12 * 10 * 10
    assert est.components["generation/vllm"] == 0.6 * 100_000
    assert max(UPDATE, RECOMPUTE) == UPDATE
    assert est.peak == RESIDENT + max(0.6 * 100_000, UPDATE)  # the engine sleeps before the update
    share = mem.estimate("rl", rl_cfg(rollout_engine="vllm", rollout_gpu_memory_utilization=0.25), {"policy": SHAPE},
                         on_gpu=True, device_bytes=100_000)
    assert share.components["generation/vllm"] == 0.25 * 100_000  # the stage's memory share
    monkeypatch.setattr(terms, "VLLM_SLEEPS", False)  # an engine that kept its reservation: the phases add
    est = mem.estimate("rl", rl_cfg(rollout_engine="vllm"), {"policy": SHAPE}, on_gpu=True, device_bytes=100_000)
    assert est.peak == RESIDENT + 0.6 * 100_000 + UPDATE


def test_rl_hf_generate_frees_its_kv_cache_and_dapo_multiplies_it():
    est = mem.estimate("rl", rl_cfg(rollout_engine="hf"), {"policy": SHAPE}, on_gpu=True)
    kv = 4 * 5 * 2 * 2 * 2 * 2  # 2 prompts x 2 samples, 5 tokens, 2 layers, K and V of 2 values, bf16
    assert est.components["generation/kv_cache"] == kv
    assert est.peak == RESIDENT + max(GATHERED + kv, UPDATE)
    dapo = mem.estimate("rl", rl_cfg(rollout_engine="hf", gen_batch_multiplier=3.0), {"policy": SHAPE}, on_gpu=True)
    assert dapo.components["generation/kv_cache"] == 3 * kv


def test_recompute_with_a_larger_budget_than_the_update_can_set_the_peak():
    est = mem.estimate("rl", rl_cfg(rollout_engine="hf", log_prob_token_budget=40), {"policy": SHAPE}, on_gpu=True)
    assert est.peak == RESIDENT + GATHERED + 40 * 136 + 40 * 10 * 10


def test_align_keeps_every_scoring_graph_of_the_discriminator():
    cfg = {"prompts_per_step": 2, "n": 4, "max_prompt_length": 3, "max_new_tokens": 2, "disc_micro_batch": 2,
           "micro_batch_size": 16, "rollout_engine": "hf", "precision": "bf16",
           "resources": {"processes": 2, "param_dtype": "bf16", "gradient_checkpointing": True}}
    est = mem.estimate("align", cfg, {"policy": SHAPE, "discriminator": SHAPE}, on_gpu=True)
    # 42 tokens in 10 rows (see test_terms_by_hand): each layer's input kept, 2 rows x 5 tokens recomputed
    # at once; 10 images of 3 vision tokens the same way
    assert est.components["discriminator/activations"] == 2 * 42 * 4 * 2 + 10 * 136 + 30 * 2 * 2 + 30 * 48
    # the actor's 16-row micro-batch without a token budget: 16 x 5 tokens through the loss
    assert est.components["policy/loss_buffers"] == 16 * 5 * 10 * (2 * 2 + 12)  # chunked: + the logits' gradient


def test_planner_config_resolves_the_algorithm_and_the_defaults_the_plan_leaves_out():
    dapo = planner_config("rl", {"algorithm": "dapo", "algorithm_overrides": {"max_tokens_per_micro_batch": 10240}})
    assert dapo["gen_batch_multiplier"] == 3.0 and dapo["update_token_budget"] == dapo["log_prob_token_budget"] == 10240
    gspo = planner_config("rl", {"algorithm": "gspo", "algorithm_overrides": {
        "max_tokens_per_micro_batch": 20480, "log_prob_max_tokens_per_micro_batch": 30720}})
    assert gspo["gen_batch_multiplier"] == 1.0
    assert (gspo["update_token_budget"], gspo["log_prob_token_budget"]) == (20480, 30720)
    align = planner_config("align", {"actor_max_tokens_per_micro_batch": 8192})
    assert (align["disc_micro_batch"], align["rollout_engine"], align["rollout_batch_size"]) == (16, "hf", 64)
    assert align["update_token_budget"] == align["log_prob_token_budget"] == 8192


def test_host_memory_is_checked_where_the_resources_say_it():
    est = mem.MemoryEstimate(world_size=8, host_node=100e9)
    assert host_fits(est, {"gpus": 8, "host_memory_gb": 100}) is False  # 90% of it usable
    assert host_fits(est, {"gpus": 8, "host_memory_gb": 200}) is True
    assert host_fits(est, {"gpus": 8}) is None and host_fits(est, {"host_memory_gb": 50}) is None


def test_the_actor_loss_buffers_are_chunked_like_the_trainers_log_probs():
    from prism_lab.algos.token_stats import DEFAULT_CHUNK_ROWS

    assert terms.LOGPROB_CHUNK_ROWS == DEFAULT_CHUNK_ROWS
    # 10 tokens, vocab 7, bf16, chunks of 4: logits + their gradient in bf16, 3 fp32 buffers of one chunk
    assert terms.chunked_loss_buffer_bytes(10, 7, 2, chunk_rows=4) == 10 * 7 * 2 * 2 + 4 * 7 * 4 * 3
    assert terms.chunked_recompute_buffer_bytes(10, 7, 2, chunk_rows=4) == 10 * 7 * 2 + 4 * 7 * 4 * 2
    assert terms.chunked_loss_buffer_bytes(3, 7, 2, chunk_rows=4) == 3 * 7 * 2 * 2 + 3 * 7 * 4 * 3  # one short chunk


def test_sdpa_on_cpu_keeps_an_attention_mask_per_layer_for_the_backward():
    # the boolean [rows x length x length] mask and its additive copies in the compute dtype (2 bytes here)
    assert terms.attention_mask_bytes(2, 5, 2, masks=2) == 2 * 5 * 5 * (1 + 2 * 2)
    cfg = {"batch_size": 2, "max_length": 5, "precision": "bf16", "resources": BF16_GPU}
    cpu = mem.estimate("sft", cfg, {"policy": SHAPE}, on_gpu=False)
    assert cpu.components["policy/attention_masks"] == 2 * 25 * (1 + 2 * 2)  # one copy in each of the 2 layers
    gc = mem.estimate("sft", {**cfg, "resources": {**BF16_GPU, "gradient_checkpointing": True}}, {"policy": SHAPE},
                      on_gpu=False)
    assert gc.components["policy/attention_masks"] == 2 * 25 * (1 + 2)  # only the layer being recomputed
    assert mem.estimate("sft", cfg, {"policy": SHAPE}, on_gpu=True).components["policy/attention_masks"] == 0
    # RL on CPU: the update's 8-token budget is 1 row of 5 (prompt 3 + response 2): 1 x 25 x (1 + 2 x 2) more
    # than on a GPU; the recompute's 12 tokens are 2 rows, one additive mask at a time
    rl = mem.estimate("rl", rl_cfg(rollout_engine="hf"), {"policy": SHAPE}, on_gpu=False)
    assert rl.components["policy/attention_masks"] == 25 * (1 + 2 * 2)
    assert rl.peak == RESIDENT + mem.PROCESS_RUNTIME_BYTES + UPDATE + 25 * 5
