"""The single-process parts of prism_lab.trainers.distributed: batch sharding, dtypes, block discovery,
the align config's even split of prompts, and the one-line refusals of what does not shard yet."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from prism_lab.config.resources import ResourcesConfig
from prism_lab.errors import ConfigError
from prism_lab.trainers import distributed as dist_


def test_shard_slice_splits_a_global_batch_into_near_equal_disjoint_shares():
    items = list(range(11))
    shares = [dist_.shard_slice(items, dist_.DistEnv(rank=r, world_size=3)) for r in range(3)]
    assert sorted(x for s in shares for x in s) == items
    assert {len(s) for s in shares} == {3, 4}
    assert dist_.shard_slice(items, dist_.SINGLE) == items


def test_param_dtype_auto_follows_the_stage_precision():
    res = ResourcesConfig()
    assert dist_.resolve_dtypes(res, "bf16")[0] == torch.bfloat16
    assert dist_.resolve_dtypes(res, "no") == (torch.float32, torch.float32, torch.float32)
    explicit = ResourcesConfig(param_dtype="bf16", reduce_dtype="bf16", master_dtype="fp32")
    assert dist_.resolve_dtypes(explicit, "no") == (torch.bfloat16, torch.bfloat16, torch.float32)


def test_blocks_are_the_decoder_layers_and_vision_blocks():
    from prism_lab.models import build_tiny_policy, build_tokenizer
    from tests.fakes import counting_corpus

    model, _ = build_tiny_policy("tiny-xs", build_tokenizer(counting_corpus(), vocab_size=300), seed=0)
    assert dist_.block_classes(model) == {"Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock"}
    assert dist_.enable_gradient_checkpointing(model) == 1 and model.is_gradient_checkpointing


def test_align_prompts_must_split_evenly_over_the_processes():
    from prism_lab.config.align import AlignConfig

    with pytest.raises(ValueError, match=r"prompts_per_step \(3\) must be a multiple of resources.processes \(2\)"):
        AlignConfig(prompts_per_step=3, resources={"processes": 2})
    assert AlignConfig(prompts_per_step=4, resources={"processes": 2}).resources.processes == 2


def test_what_does_not_shard_yet_is_refused_in_one_line():
    two = dist_.DistEnv(rank=0, world_size=2)
    with pytest.raises(ConfigError, match="rollout engine 'vllm' with resources.processes > 1"):
        dist_.sync_engine(SimpleNamespace(kind="vllm"), two)
    hf = SimpleNamespace(kind="hf", synced=False)
    dist_.sync_engine(hf, two)
    assert hf.synced and callable(hf.all_finished)
    dist_.sync_engine(SimpleNamespace(kind="vllm", generates_locally=True), two)  # colocated: each rank samples alone


def test_a_world_size_that_differs_from_the_config_is_an_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="resources.processes is 2 but this process runs with WORLD_SIZE=1"):
        dist_.init_distributed(2)
    env = dist_.init_distributed(1)
    assert env.world_size == 1 and env.is_main and not env.sharded
