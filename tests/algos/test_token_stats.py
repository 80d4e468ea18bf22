"""prism_lab.algos.token_stats: chunked per-token log-probs and entropies equal the one-chunk form and never hold a
float32 [tokens x vocab] working copy of more than one chunk."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from prism_lab.algos.token_stats import token_logprobs_and_entropy

V = 97


def _inputs(dtype=torch.float32, rows=(3, 7)):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(*rows, V, generator=g)).to(dtype).requires_grad_(True)
    tokens = torch.randint(0, V, rows, generator=g)
    suppress = torch.zeros(V, dtype=torch.bool)
    suppress[[5, 11, 60]] = True
    tokens[torch.isin(tokens, torch.tensor([5, 11, 60]))] = 0
    return logits, tokens, suppress


def _run(logits, tokens, suppress, chunk_rows, **kw):
    logits.grad = None
    logp, ent = token_logprobs_and_entropy(logits, tokens, suppress=suppress, with_entropy=True,
                                           chunk_rows=chunk_rows, **kw)
    w = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    ((logp * w).sum() + (ent * w.flip(-1)).sum()).backward()
    return logp.detach(), ent.detach(), logits.grad.clone()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_rows", [1, 4, 5, 100])
def test_chunks_give_the_values_and_gradients_of_one_chunk(temperature, chunk_rows):
    logits, tokens, suppress = _inputs()
    ref = _run(logits, tokens, suppress, None, temperature=temperature)
    got = _run(logits, tokens, suppress, chunk_rows, temperature=temperature)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the reference itself: log_softmax / entropy of the masked, tempered logits
    z = (logits.detach() / temperature).masked_fill(suppress, torch.finfo(torch.float32).min)
    lp = torch.log_softmax(z, -1)
    torch.testing.assert_close(ref[0], lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref[1], -(lp.exp() * lp.nan_to_num(neginf=0.0)).sum(-1), atol=1e-5, rtol=1e-5)


def test_a_non_flat_slice_and_entropy_without_graph():
    full, tokens, suppress = _inputs(rows=(3, 8))
    sliced, toks = full[:, :-1], tokens[:, :-1]  # what completion_logprobs hands over: logits[:, :-1]
    ref = token_logprobs_and_entropy(sliced.detach().contiguous(), toks, suppress=suppress, with_entropy=True,
                                     chunk_rows=None)
    logp, ent = token_logprobs_and_entropy(sliced, toks, suppress=suppress, with_entropy=True, entropy_grad=False,
                                           chunk_rows=2)
    torch.testing.assert_close(logp.detach(), ref[0])
    torch.testing.assert_close(ent, ref[1])
    assert logp.requires_grad and not ent.requires_grad
    assert token_logprobs_and_entropy(sliced, toks, chunk_rows=2)[1] is None
    with pytest.raises(ValueError):
        token_logprobs_and_entropy(sliced, toks, chunk_rows=0)


class _LargestFloat32(TorchDispatchMode):
    """Records the largest float32 tensor any op produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_bf16_logits_never_have_a_float32_copy_larger_than_a_chunk():
    logits, tokens, suppress = _inputs(torch.bfloat16, rows=(4, 16))
    for chunk_rows, bound in ((8, 8 * V), (None, 64 * V)):
        with _LargestFloat32() as seen:
            _run(logits, tokens, suppress, chunk_rows, temperature=0.7)
        assert seen.largest == bound, (chunk_rows, seen.largest)
    assert logits.grad.dtype == torch.bfloat16
