"""The colocated rollout engine (prism_lab/rollout/colocate.py, vllm.py, weight_sync.py), on CPU.

vLLM is GPU-only and not installed here: ``tests.fakes.RecordingEngine`` is a test double of the interface the
trainers call. These tests prove what prism-lab builds, hands over and in which order; nothing about vLLM
itself (benchmarks/gpu/check.py runs the real engine on a GPU). The 2-process sync, and RL through the
colocated path (rollout_engine hf_colocated) against the plain HF engine, are in tests/trainers/test_distributed.py.
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


# ---------------------------------------------------------------- hf_colocated: the same path, a real generator
def test_hf_colocated_engine_after_a_sync_holds_the_policy_and_samples_as_the_hf_engine(tok, tmp_path):
    """``rollout_engine: hf_colocated`` (paper-cpu's RL and alignment): a transformers copy built from the input
    checkpoint, synced by push_weights through the colocated phases, holds the trained policy's weights exactly
    (a tied head following the embedding) and samples the plain HF engine's tokens (log-probs to the last bit) for
    a seed."""
    from prism_lab.models import save_policy
    from prism_lab.rollout.colocate import make_training_engine

    preset = dataclasses.replace(PRESETS.get("tiny-xs"), tie_word_embeddings=True)  # untied: test_distributed
    policy, proc = build_tiny_policy(preset, tok, seed=0)
    save_policy(policy, proc, tmp_path)  # the stage's input checkpoint
    with torch.no_grad():  # the policy trained away from it
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    eng = make_training_engine(policy, proc, RLConfig(rollout_engine="hf_colocated").rollout(),
                               checkpoint_dir=tmp_path, rank=0, device=torch.device("cpu"))
    assert isinstance(eng, ColocatedEngine) and eng.kind == "hf_colocated" and eng.engine.awake == set()  # asleep
    prompts = [Prompt(messages=[{"role": "user", "content": "add 1 ."}]),
               Prompt(messages=[{"role": "user", "content": "how many red circles are there ?"}])]
    kw = dict(n=2, max_new_tokens=6, seed=5, return_logprobs=True)
    got, ref = eng.generate(prompts, **kw), HFGenerateEngine(policy, proc).generate(prompts, **kw)
    assert eng.syncs == 1 and eng.engine.awake == set()  # synced, generated, asleep again
    copy = dict(eng.engine.model.named_parameters())
    assert copy.keys() == dict(policy.named_parameters()).keys()
    assert all(torch.equal(copy[n], p) for n, p in policy.named_parameters())
    head, emb = eng.engine.model.lm_head.weight, eng.engine.model.model.language_model.embed_tokens.weight
    assert head.data_ptr() == emb.data_ptr() and torch.equal(head, policy.lm_head.weight)
    assert [r.token_ids for r in got] == [r.token_ids for r in ref]
    for a, b in zip(got, ref):  # the same weights; a kernel may round the last bit apart
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_hf_colocated_engine_refuses_loads_and_generation_out_of_phase(tok):
    from prism_lab.errors import PrismError
    from prism_lab.rollout import make_engine
    from prism_lab.rollout.colocate import make_training_engine
    from prism_lab.rollout.hf_colocated import HFColocatedEngine

    policy, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    eng = HFColocatedEngine(build_tiny_policy("tiny-xs", tok, seed=1)[0], proc)
    whole = [(n, p.detach()) for n, p in policy.named_parameters()]
    prompts = [Prompt(messages=[{"role": "user", "content": "add 1 ."}])]
    eng.sleep(level=1)
    with pytest.raises(RuntimeError, match="wake_up"):
        eng.load_weights(whole[:1])
    eng.wake_up(["weights"])
    with pytest.raises(RuntimeError, match="kv_cache"):
        eng.generate(prompts, max_new_tokens=2)
    with pytest.raises(ValueError, match="whole tensors"):
        eng.load_weights([(whole[0][0], whole[0][1][:1])])  # a shard
    with pytest.raises(ValueError, match="no parameter 'head.score.weight'"):
        eng.load_weights([("head.score.weight", whole[0][1])])
    eng.sleep(level=2)  # vLLM drops its weights at level 2: every one must come back before generating
    eng.wake_up()
    eng.load_weights(whole[:-1])
    with pytest.raises(RuntimeError, match="not loaded again"):
        eng.generate(prompts, max_new_tokens=2)
    eng.load_weights(whole[-1:])
    assert len(eng.generate(prompts, max_new_tokens=2)) == 1
    with pytest.raises(PrismError, match="input checkpoint directory"):
        make_training_engine(policy, proc, RLConfig(rollout_engine="hf_colocated").rollout(), checkpoint_dir=None,
                             rank=0, device=torch.device("cpu"))
    with pytest.raises(PrismError, match="training stages|RL and alignment"):
        make_engine(policy, proc, "hf_colocated")
