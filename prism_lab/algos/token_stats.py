"""Per-token log-probs and entropies of ``[tokens x vocab]`` logits, a chunk of rows at a time.

For one row of logits ``x`` (temperature ``T``, suppressed vocabulary entries set to the dtype's
minimum, half precision upcast to float32 first) with ``z = x / T``:

    logp[t] = z[y_t] - logsumexp(z)          H = logsumexp(z) - sum_v softmax(z)_v * z_v

The float32 working copies of a row (upcast, softmax) are ``vocab`` wide; at a paper's shapes
(thousands of completion tokens x 151,936) a whole batch of them is tens of GB. Here at most
``chunk_rows`` rows are worked on at once, forward and backward: with gradients each chunk runs under
activation checkpointing (non-reentrant), so its backward recomputes its own working copies instead of
keeping every chunk's alive until the loss's backward. Values and gradients equal the one-chunk form.

Pure torch; no I/O.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = ["DEFAULT_CHUNK_ROWS", "token_logprobs_and_entropy"]

#: Rows per chunk by default: 1,024 x 151,936 float32 = 0.6 GB per working copy.
DEFAULT_CHUNK_ROWS = 1024

_NO_ENTROPY, _ENTROPY, _ENTROPY_NO_GRAD = 0, 1, 2


def _row_stats(logits: Tensor, tokens: Tensor, temperature: float, suppress: Tensor | None,
               entropy_mode: int) -> tuple[Tensor, Tensor]:
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature != 1.0:
        z = z / temperature
    if suppress is not None:
        z = z.masked_fill(suppress, torch.finfo(z.dtype).min)
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
    if entropy_mode == _NO_ENTROPY:
        return logp, logp.new_zeros(0)
    with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_mode == _ENTROPY):
        ent = lse - (torch.softmax(z, dim=-1) * z).sum(dim=-1)
    return logp, ent if entropy_mode == _ENTROPY else ent.detach()


def token_logprobs_and_entropy(
    logits: Tensor,
    tokens: Tensor,
    *,
    temperature: float = 1.0,
    suppress: Tensor | None = None,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
) -> tuple[Tensor, Tensor | None]:
    """``(logp, entropy)`` of ``logits[..., V]`` at ``tokens[...]``, each shaped like ``tokens`` (entropy None unless
    ``with_entropy``; without a graph when ``entropy_grad`` is False).

    ``suppress``: a ``[V]`` bool mask of vocabulary entries that get no probability. ``chunk_rows``: rows (tokens)
    worked on at once; None = all of them in one chunk. The results have the computation dtype (float32 for
    half-precision logits).
    """
    if chunk_rows is not None and chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    mode = _NO_ENTROPY if not with_entropy else (_ENTROPY if entropy_grad else _ENTROPY_NO_GRAD)
    logps, ents = [], []
    for block, toks in _row_blocks(logits, tokens.reshape(-1)):
        size = max(1, block.shape[0]) if chunk_rows is None else chunk_rows
        recompute = torch.is_grad_enabled() and block.requires_grad and size < block.shape[0]
        for part, part_toks in zip(block.split(size), toks.split(size)):
            if recompute:
                logp, ent = checkpoint(_row_stats, part, part_toks, temperature, suppress, mode, use_reentrant=False)
            else:
                logp, ent = _row_stats(part, part_toks, temperature, suppress, mode)
            logps.append(logp)
            ents.append(ent)
    logp = torch.cat(logps).view(tokens.shape)
    return logp, (None if mode == _NO_ENTROPY else torch.cat(ents).view(tokens.shape))


def _row_blocks(logits: Tensor, tokens: Tensor) -> list[tuple[Tensor, Tensor]]:
    """``[rows, V]`` views of ``logits`` with their tokens: one view when the leading dims flatten without a copy,
    else one per leading index (``logits[:, :-1]`` of a ``[B, C + 1, V]`` output does not flatten; each
    ``[C, V]`` row of it does)."""
    vocab = logits.shape[-1]
    try:
        return [(logits.view(-1, vocab), tokens)]
    except RuntimeError:
        if logits.dim() < 3:
            return [(logits.reshape(-1, vocab), tokens)]
        per = tokens.numel() // max(1, logits.shape[0])
        return [(logits[i].reshape(-1, vocab), tokens[i * per:(i + 1) * per]) for i in range(logits.shape[0])]
