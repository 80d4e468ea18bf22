"""prism_lab.rollout.model_len and the vLLM engine's arguments: every engine is sized for prompt + response."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from prism_lab.config.align import AlignConfig
from prism_lab.config.rl import RLConfig
from prism_lab.models.loader import build_tiny_policy
from prism_lab.models.tokenizer import build_tokenizer
from prism_lab.rollout import Prompt, build_prompt_inputs, make_engine
from prism_lab.rollout.model_len import (
    longest_prompt_tokens,
    max_model_len,
    prompts_max_model_len,
)
from prism_lab.rollout.vllm import VLLMEngine, llm_kwargs
from tests.fakes import counting_corpus


def test_max_model_len_is_prompt_plus_response():
    assert max_model_len(2048, 8192) == 10_240
    for bad in ((0, 8), (8, 0), (-1, 8), (True, 8), (8.0, 8)):
        with pytest.raises(ValueError):
            max_model_len(*bad)


def test_stage_configs_give_their_prompt_and_response_caps():
    assert RLConfig().rollout().max_model_len == 2048 + 8192
    assert RLConfig(max_prompt_length=512, max_new_tokens=64).rollout().max_model_len == 576
    assert AlignConfig().rollout().max_model_len == 2048 + 6144
    assert AlignConfig(max_prompt_length=100, max_new_tokens=28).rollout().max_model_len == 128


def test_llm_kwargs_carry_max_model_len_and_require_it():
    kw = llm_kwargs("/ckpt", max_model_len=10_240, gpu_memory_utilization=0.5, seed=3)
    assert kw["max_model_len"] == 10_240 and kw["model"] == "/ckpt" and kw["seed"] == 3
    with pytest.raises(TypeError):
        llm_kwargs("/ckpt")  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        llm_kwargs("/ckpt", max_model_len=0)
    # the engine cannot be built without it either (checked before vllm is imported)
    assert inspect.signature(VLLMEngine).parameters["max_model_len"].default is inspect.Parameter.empty


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    return build_tiny_policy("tiny-xs", build_tokenizer(counting_corpus(), vocab_size=400), seed=0)


def _image(seed: int, side: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8))


def test_longest_prompt_is_counted_with_image_tokens(policy):
    _, proc = policy
    prompts = [Prompt([{"role": "user", "content": "<image>add 1 ."}], [_image(0, 64)]),
               Prompt([{"role": "user", "content": "<image>how many red circles are there ? add 3 ."}],
                      [_image(1, 128)]),
               Prompt([{"role": "user", "content": "hi"}], [])]
    each = [int(build_prompt_inputs(proc, [p])["attention_mask"].sum()) for p in prompts]
    assert each[1] == max(each) and each[1] > each[0] > each[2]
    assert longest_prompt_tokens(proc, iter(prompts), chunk=2) == each[1]
    assert prompts_max_model_len("vllm", proc, prompts, 32) == each[1] + 32
    assert prompts_max_model_len("hf", proc, prompts, 32) is None  # the HF engine needs none


def test_a_vllm_engine_is_never_built_without_max_model_len(policy, monkeypatch):
    import prism_lab.rollout as rollout_mod

    model, proc = policy
    monkeypatch.setattr(rollout_mod, "vllm_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="max_model_len"):
        make_engine(model, proc, "vllm")
