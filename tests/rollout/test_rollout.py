"""Rollout engines (prism_lab.rollout): output contract, determinism, log-probs vs a teacher-forced forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from prism_lab.errors import ConfigError, PrismError
from prism_lab.models.loader import build_tiny_policy
from prism_lab.models.tokenizer import build_tokenizer
from prism_lab.prompts import SYSTEM_PROMPT
from prism_lab.rollout import (
    HFGenerateEngine,
    Prompt,
    build_prompt_inputs,
    make_engine,
    vllm_available,
)
from prism_lab.trainers.logprobs import completion_logprobs, make_sequence_batch
from tests.fakes import counting_corpus


@pytest.fixture(scope="module")
def policy():
    torch.set_num_threads(1)
    tok = build_tokenizer(counting_corpus(), vocab_size=400)
    return build_tiny_policy("tiny-xs", tok, seed=0)


def _image(seed: int, side: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def prompts() -> list[Prompt]:
    return [
        Prompt([{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": "<image>how many red circles are there ? add 3 ."}], [_image(0)]),
        # content-list form, two images, a different length (exercises left padding)
        Prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "compare"},
                                              {"type": "image"}, {"type": "text", "text": "how many ?"}]}],
               [_image(1), _image(2)]),
        Prompt([{"role": "user", "content": "<image>add 1 ."}], [_image(3)]),
    ]


@pytest.fixture(scope="module")
def engines(policy):
    model, proc = policy
    return {"fast": HFGenerateEngine(model, proc), "generate": HFGenerateEngine(model, proc, use_hf_generate=True)}


def test_build_prompt_inputs_left_pads(policy, prompts):
    _, proc = policy
    b = build_prompt_inputs(proc, prompts)
    mask = b["attention_mask"]
    assert bool((mask[:, -1] == 1).all()), "left padding: every row ends with a real token"
    assert int(mask[2].sum()) < mask.shape[1] and int(mask[2, 0]) == 0
    assert b["image_grid_thw"].shape[0] == 4  # 1 + 2 + 1 images, in prompt order
    assert proc.tokenizer.padding_side == "right", "padding side restored"


@pytest.mark.parametrize("which", ["fast", "generate"])
def test_contract(engines, prompts, which):
    eng = engines[which]
    outs = eng.generate(prompts, n=3, max_new_tokens=10, seed=0, return_logprobs=True, batch_size=4)
    assert len(outs) == 9
    assert [o.prompt_index for o in outs] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    tok = eng.processor.tokenizer
    for o in outs:
        assert 1 <= len(o.token_ids) <= 10
        assert o.logprobs is not None and len(o.logprobs) == len(o.token_ids)
        assert all(lp <= 0.0 for lp in o.logprobs)
        eos_pos = [i for i, t in enumerate(o.token_ids) if t in eng.eos_ids]
        if o.finish_reason == "stop":
            assert eos_pos == [len(o.token_ids) - 1]
        else:
            assert o.finish_reason == "length" and eos_pos == [] and len(o.token_ids) == 10
        assert not set(o.token_ids) & set(eng.suppress_token_ids), "vision placeholders are never sampled"
        assert o.text == tok.decode(o.token_ids, skip_special_tokens=True)


@pytest.mark.parametrize("which", ["fast", "generate"])
def test_stop_reason_and_eos_included(policy, prompts, which):
    model, proc = policy
    eng = HFGenerateEngine(model, proc, use_hf_generate=which == "generate")
    # make (almost) every token an end token: each completion is exactly one token, an eos
    vocab = model.config.text_config.vocab_size
    eng.eos_ids = [t for t in range(vocab) if t not in eng.suppress_token_ids]
    outs = eng.generate(prompts[:2], n=2, max_new_tokens=6, seed=1)
    assert all(o.finish_reason == "stop" and len(o.token_ids) == 1 for o in outs)


@pytest.mark.parametrize("which", ["fast", "generate"])
def test_greedy_and_seeded_determinism(engines, prompts, which):
    eng = engines[which]
    g1 = eng.generate(prompts, n=2, max_new_tokens=8, do_sample=False)
    g2 = eng.generate(prompts, n=2, max_new_tokens=8, temperature=0.0, seed=123)
    assert [o.token_ids for o in g1] == [o.token_ids for o in g2]
    assert g1[0].token_ids == g1[1].token_ids, "greedy copies of one prompt are identical"
    before = torch.get_rng_state()
    s1 = eng.generate(prompts, n=2, max_new_tokens=8, seed=7)
    s2 = eng.generate(prompts, n=2, max_new_tokens=8, seed=7)
    assert torch.equal(before, torch.get_rng_state()), "a seeded call leaves the global RNG alone"
    assert [o.token_ids for o in s1] == [o.token_ids for o in s2]
    s3 = eng.generate(prompts, n=2, max_new_tokens=8, seed=8)
    assert [o.token_ids for o in s1] != [o.token_ids for o in s3]


def test_fast_loop_matches_generate_greedy(engines, prompts):
    a = engines["fast"].generate(prompts, n=1, max_new_tokens=12, do_sample=False, return_logprobs=True)
    b = engines["generate"].generate(prompts, n=1, max_new_tokens=12, do_sample=False, return_logprobs=True)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    for x, y in zip(a, b):
        assert np.allclose(x.logprobs, y.logprobs, atol=1e-5)


@pytest.mark.parametrize("which", ["fast", "generate"])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_logprobs_match_teacher_forced_forward(policy, engines, prompts, which, temperature, top_p):
    model, proc = policy
    eng = engines[which]
    outs = eng.generate(prompts, n=2, max_new_tokens=12, temperature=temperature, top_p=top_p, seed=5,
                        return_logprobs=True)
    sb = make_sequence_batch(build_prompt_inputs(proc, prompts), [o.prompt_index for o in outs],
                             [o.token_ids for o in outs], pad_token_id=eng.pad_id)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, sb, temperature=temperature if temperature > 0 else 1.0,
                                    suppress_token_ids=eng.suppress_token_ids)
    for i, o in enumerate(outs):
        ref = torch.tensor(o.logprobs)
        assert torch.allclose(lp[i, : len(o.token_ids)], ref, atol=1e-4), (i, (lp[i, : len(ref)] - ref).abs().max())
        assert float(lp[i, len(o.token_ids):].abs().sum()) == 0.0


def test_text_only_prompts(engines, policy):
    model, proc = policy
    ps = [Prompt([{"role": "user", "content": "hello" + " there" * i}], []) for i in range(3)]
    outs = engines["fast"].generate(ps, n=2, max_new_tokens=6, seed=0, return_logprobs=True)
    sb = make_sequence_batch(build_prompt_inputs(proc, ps), [o.prompt_index for o in outs], [o.token_ids for o in outs],
                             pad_token_id=engines["fast"].pad_id)
    with torch.no_grad():
        lp, _ = completion_logprobs(model, sb, suppress_token_ids=engines["fast"].suppress_token_ids)
    for i, o in enumerate(outs):
        assert torch.allclose(lp[i, : len(o.token_ids)], torch.tensor(o.logprobs), atol=1e-4)


def test_make_engine(policy):
    model, proc = policy
    assert isinstance(make_engine(model, proc, "hf"), HFGenerateEngine)
    if not (vllm_available() and torch.cuda.is_available()):
        assert isinstance(make_engine(model, proc, "auto"), HFGenerateEngine)
    if not vllm_available():
        with pytest.raises(PrismError, match="vllm is not installed"):
            make_engine(model, proc, "vllm")
    with pytest.raises(ConfigError):
        make_engine(model, proc, "tgi")


def test_image_count_mismatch_is_an_error(engines):
    with pytest.raises(PrismError, match="image placeholders"):
        engines["fast"].generate([Prompt([{"role": "user", "content": "<image><image>?"}], [_image(0)])],
                                 max_new_tokens=2)
