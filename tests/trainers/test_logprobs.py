"""prism_lab.trainers.logprobs: the shared-prefix forward under gradient checkpointing, chunked log-probs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from prism_lab.models.loader import build_tiny_policy
from prism_lab.models.tokenizer import build_tokenizer
from prism_lab.prompts import SYSTEM_PROMPT
from prism_lab.trainers.distributed import enable_gradient_checkpointing
from prism_lab.trainers.logprobs import completion_logprobs, make_sequence_batch
from tests.fakes import counting_corpus


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def policy_and_batch():
    """tiny-xs, two image prompts with two sampled completions each (interleaved), as the actor update sees them."""
    from prism_lab.rollout import HFGenerateEngine, Prompt, build_prompt_inputs

    torch.set_num_threads(1)
    tok = build_tokenizer(counting_corpus(), vocab_size=400)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    prompts = [Prompt([{"role": "system", "content": SYSTEM_PROMPT},
                       {"role": "user", "content": f"<image>how many red circles ? add {i}."}],
                      [Image.open(io.BytesIO(_png(i))).convert("RGB")]) for i in range(2)]
    eng = HFGenerateEngine(model, proc)
    outs = eng.generate(prompts, n=2, max_new_tokens=8, seed=0, return_logprobs=True)
    outs = [outs[i] for i in (0, 2, 1, 3)]
    sb = make_sequence_batch(build_prompt_inputs(proc, prompts), [o.prompt_index for o in outs],
                             [o.token_ids for o in outs], pad_token_id=eng.pad_id)
    return model, sb, eng.suppress_token_ids


def _logprobs_and_grads(model, sb, suppress, **kw):
    model.zero_grad(set_to_none=True)
    lp, ent = completion_logprobs(model, sb, suppress_token_ids=suppress, with_entropy=True, **kw)
    weights = torch.linspace(-1, 1, lp.numel()).view_as(lp)
    ((lp * weights).sum() + 0.1 * (ent * sb.response_mask).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return lp.detach(), ent.detach(), grads


def test_shared_prefix_under_gradient_checkpointing_equals_the_plain_forward(policy_and_batch):
    """Train mode + activation checkpointing + the prompt-once forward (the paper grid's actor update) gives the
    log-probs, entropies and gradients of the same forward without checkpointing (it used to crash: the
    checkpointed decoder layers dropped the KV cache, so the prefix pass filled nothing)."""
    model, sb, suppress = policy_and_batch
    model.train()
    ref = _logprobs_and_grads(model, sb, suppress, shared_prefix=True)
    assert enable_gradient_checkpointing(model) == 1
    try:
        got = _logprobs_and_grads(model, sb, suppress, shared_prefix=True, chunk_rows=3)  # the paper grid's path
        full = _logprobs_and_grads(model, sb, suppress, shared_prefix=False)
    finally:
        model.gradient_checkpointing_disable()
    assert not any("_can_checkpoint_with_cache" in m.__dict__ for m in model.modules())  # the layers' flag restored
    for run in (got, full):
        torch.testing.assert_close(run[0], ref[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(run[1], ref[1], atol=1e-5, rtol=1e-4)
        assert run[2].keys() == ref[2].keys() and len(ref[2]) > 10
        for name, g in ref[2].items():
            torch.testing.assert_close(run[2][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_logprobs_and_entropies_equal_the_one_chunk_form(policy_and_batch):
    """`chunk_rows` (float32 working copies of a few completion tokens at a time) changes neither the values nor
    the gradients of the update's log-probs and entropies, on both forwards."""
    model, sb, suppress = policy_and_batch
    model.train()
    for shared in (True, False):
        ref = _logprobs_and_grads(model, sb, suppress, shared_prefix=shared, chunk_rows=None, temperature=0.7)
        got = _logprobs_and_grads(model, sb, suppress, shared_prefix=shared, chunk_rows=3, temperature=0.7)
        torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(got[1], ref[1], atol=1e-6, rtol=1e-5)
        for name, g in ref[2].items():
            torch.testing.assert_close(got[2][name], g, atol=1e-6, rtol=1e-5, msg=name)
