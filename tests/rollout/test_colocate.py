"""The colocated rollout engine (prism_lab/rollout/colocate.py, vllm.py, weight_sync.py), on CPU.

vLLM is GPU-only and not installed here: ``tests.fakes.RecordingEngine`` is a test double of the interface the
trainers call. These tests prove what prism-lab builds, hands over and in which order; nothing about vLLM
itself (benchmarks/gpu/check.py runs the real engine on a GPU). The 2-process sync is in
tests/trainers/test_distributed.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from prism_lab.config.align import AlignConfig
from prism_lab.config.rl import RLConfig
from prism_lab.models.loader import build_tiny_policy
from prism_lab.models.presets import PRESETS
from prism_lab.models.tokenizer import build_tokenizer
from prism_lab.rollout import HFGenerateEngine, Prompt
from prism_lab.rollout.colocate import PHASES, ColocatedEngine
from prism_lab.rollout.vllm import colocated_llm_kwargs, llm_kwargs
from prism_lab.rollout.weight_sync import buckets, checkpoint_name, push_weights
from tests.fakes import RecordingEngine, counting_corpus


@pytest.fixture(scope="module")
def tok():
    torch.set_num_threads(1)
    return build_tokenizer(counting_corpus(), vocab_size=300)


def _saved_names(model, tmp_path) -> list[str]:
    model.save_pretrained(str(tmp_path))
    return sorted(load_file(str(tmp_path / "model.safetensors")))


def length_parity_score(text, gt, eq=(), acc_weight=0.8, format_weight=0.2):
    """A toy reward with variance inside each group of a random policy (its text's length parity)."""
    from prism_lab.rewards import RewardResult

    acc = float(len(text) % 2 == 0)
    return RewardResult(acc_weight * acc, acc, 0.0)


# ---------------------------------------------------------------- engine kwargs (pure, no vllm)
def test_colocated_engine_kwargs_follow_the_stage_config():
    rl = RLConfig(max_prompt_length=2048, max_new_tokens=8192, rollout_gpu_memory_utilization=0.4, seed=3)
    kw = [colocated_llm_kwargs("/ckpt", rl.rollout(), rank=r) for r in (0, 1)]
    for k in kw:
        assert k["model"] == "/ckpt" and k["max_model_len"] == 2048 + 8192
        assert k["distributed_executor_backend"] == "external_launcher" and k["tensor_parallel_size"] == 1
        assert k["enable_sleep_mode"] is True and k["dtype"] == "bfloat16" and k["gpu_memory_utilization"] == 0.4
        assert 0 <= k["seed"] < 2**32  # vLLM seeds numpy
    assert kw[0]["seed"] != kw[1]["seed"]  # each rank samples its own prompts with its own stream
    assert colocated_llm_kwargs("/ckpt", rl.rollout(), rank=1) == kw[1]
    align = AlignConfig(max_prompt_length=1024, max_new_tokens=6144, rollout_gpu_memory_utilization=0.25)
    a = colocated_llm_kwargs("/p", align.rollout(), rank=0)
    assert a["max_model_len"] == 1024 + 6144 and a["gpu_memory_utilization"] == 0.25
    plain = llm_kwargs("/p", max_model_len=64)  # evaluation's engine: vLLM's own executor, no sleep mode
    assert "distributed_executor_backend" not in plain and "enable_sleep_mode" not in plain
    with pytest.raises(TypeError, match="max_model_len"):  # every engine gets one (rollout/model_len.py)
        llm_kwargs("/p", colocated=True)


def test_the_memory_share_is_an_added_field_that_keeps_run_keys():
    assert "rollout_gpu_memory_utilization" not in RLConfig().model_dump()
    assert "rollout_gpu_memory_utilization" not in AlignConfig().model_dump()
    assert RLConfig(rollout_gpu_memory_utilization=0.3).model_dump()["rollout_gpu_memory_utilization"] == 0.3


# ---------------------------------------------------------------- weight sync (one process)
def test_checkpoint_names_drop_wrapper_segments_and_refuse_strangers():
    assert checkpoint_name("model.language_model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "model.language_model.layers.0.mlp.up_proj.weight"
    assert checkpoint_name("_orig_mod.model.visual.merger.linear_fc1.weight") == "model.visual.merger.linear_fc1.weight"
    with pytest.raises(ValueError, match="not part of a Qwen3-VL checkpoint"):
        checkpoint_name("head.score.weight")


def test_buckets_keep_the_order_and_the_byte_cap():
    items = [(str(i), torch.zeros(n)) for i, n in enumerate([3, 3, 10, 1, 1])]  # float32: 4 bytes each
    got = list(buckets(items, max_bytes=24))
    assert [[n for n, _ in b] for b in got] == [["0", "1"], ["2"], ["3", "4"]]  # 40 bytes go alone


@pytest.mark.parametrize("tied", [False, True])
def test_sync_sends_every_parameter_whole_under_its_checkpoint_name(tok, tied, tmp_path):
    preset = dataclasses.replace(PRESETS.get("tiny-xs"), tie_word_embeddings=tied)
    model, _ = build_tiny_policy(preset, tok, seed=0)
    fake = RecordingEngine()
    sent = push_weights(model, fake, device=torch.device("cpu"), dtype=torch.bfloat16, bucket_bytes=64 << 10)
    got = [pair for load in fake.loads for pair in load]
    assert len(fake.loads) > 1 and sent == len(got)  # several buckets
    names = [n for n, _ in got]
    assert names == [n for n, _ in model.named_parameters()]  # model order, each once
    assert sorted(names) == _saved_names(model, tmp_path)  # exactly the names vLLM reads from the checkpoint
    assert ("lm_head.weight" in names) is not tied  # a tied head is the embedding: not sent twice
    params = dict(model.named_parameters())
    for name, t in got:
        assert t.dtype == torch.bfloat16 and torch.equal(t, params[name].detach().to(torch.bfloat16))


# ---------------------------------------------------------------- the choreography (one process)
def test_one_step_wakes_syncs_generates_and_sleeps_in_order(tok):
    model, _ = build_tiny_policy("tiny-xs", tok, seed=0)
    fake = RecordingEngine()
    eng = ColocatedEngine(fake, model, device=torch.device("cpu"), dtype=None)
    assert fake.events == [("sleep", 1)]  # asleep until the first rollout
    prompts = [Prompt(messages=[{"role": "user", "content": "add 1 ."}])]
    assert len(eng.generate(prompts, n=2, max_new_tokens=3)) == 2
    eng.generate(prompts, n=2, max_new_tokens=3)  # a second generation batch of the same step: no new sync
    eng.policy_updated()
    eng.generate(prompts, n=2, max_new_tokens=3)
    one = ["wake_weights", "sync", "wake_kv_cache", "generate", "sleep"]
    assert one == [p for p in PHASES if p != "train"]
    assert fake.phases() == ["sleep", *one, "wake_weights", "wake_kv_cache", "generate", "sleep", *one]
    assert eng.syncs == 2 and eng.kind == "vllm" and eng.generates_locally
    dropped = RecordingEngine()
    eng2 = ColocatedEngine(dropped, model, device=torch.device("cpu"), sleep_level=2)
    eng2.generate(prompts, n=1, max_new_tokens=3)
    eng2.generate(prompts, n=1, max_new_tokens=3)
    assert eng2.syncs == 2  # level 2 drops the engine's weights at every sleep: every rollout syncs


def test_a_colocated_generation_trains_the_policy_as_the_hf_engines_does(tok):
    """RL on tiny-xs: the HF engine's rollouts, replayed through the colocated engine's fake, give the same
    metrics and weights (the trainer recomputes the old log-probs for a vLLM engine; on-policy, they agree)."""
    from prism_lab.data.rl_parquet import RLExample
    from prism_lab.prompts import SYSTEM_PROMPT
    from prism_lab.trainers.rl import train_rl

    exs = [RLExample(index=i, data_source="mm_gad",
                     prompt=[{"role": "system", "content": SYSTEM_PROMPT},
                             {"role": "user", "content": f"how many red circles are there ? add {i % 10} ."}],
                     images=[], ground_truth=str(i % 7), equivalent_answers=[]) for i in range(6)]
    cfg = RLConfig(algorithm="grpo", steps=2, prompts_per_step=2, n=4, max_new_tokens=8, micro_batch_size=3, seed=0,
                   save_every=1000, precision="fp32", algorithm_overrides={"lr": 1e-3})
    model_hf, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    hf = HFGenerateEngine(model_hf, proc)
    made: list = []

    def recording(prompts, **kw):
        out = HFGenerateEngine.generate(hf, prompts, **kw)
        made.append(out)
        return out

    hf.generate = recording
    ref: list = []
    train_rl(model_hf, proc, exs, cfg, engine=hf, score_fn=length_parity_score, log=lambda s, m: ref.append(m))
    model_v, proc_v = build_tiny_policy("tiny-xs", tok, seed=0)
    replies = iter(made)
    fake = RecordingEngine(reply=lambda prompts, **kw: next(replies))
    got: list = []
    res = train_rl(model_v, proc_v, exs, cfg, engine=ColocatedEngine(fake, model_v, device=torch.device("cpu")),
                   score_fn=length_parity_score, log=lambda s, m: got.append(m))
    assert res.recompute_calls == 2  # the vLLM path: old log-probs from the trainer's own pass
    assert fake.phases().count("sync") == 2 and fake.phases().count("generate") == 2  # once per step
    assert len(ref) == len(got) == 2
    for a, b in zip(ref, got):
        for key in a:
            if key.startswith(("time/", "samples/s", "train_samples/s", "rollout/")):
                continue
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    init, _ = build_tiny_policy("tiny-xs", tok, seed=0)
    with torch.no_grad():
        moved = max(float((p - q).abs().max()) for p, q in zip(model_hf.parameters(), init.parameters()))
        diff = max(float((p - q).abs().max()) for p, q in zip(model_hf.parameters(), model_v.parameters()))
    assert moved > 1e-3 and diff < 5e-5  # AdamW turns last-bit differences of tiny gradients into ~1e-6 steps
