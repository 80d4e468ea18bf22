"""Teacher-forced forward pass -> per-token log-probs (and entropies) of completions, with images.

A *sequence batch* is built from a left-padded processor batch of unique prompts (see
:func:`prism_lab.rollout.build_prompt_inputs`), a row index into it for every sequence (several
sequences may share a prompt) and the completion token ids of each sequence:

    input_ids       = [left-padded prompt | completion, right-padded]
    attention_mask  = [prompt mask        | 1 on completion tokens, 0 on padding]
    mm_token_type_ids = [prompt types     | zeros]            (docs/cpu_notes.md §6)
    pixel_values / image_grid_thw: the images of each sequence's prompt, in sequence order

Columns that are padding in every row are trimmed (left side of the prompt, right side of the
completion), which does not change any valid position: Qwen3-VL computes its (m)RoPE positions
from the attention mask. ``response_mask`` ``[B, C]`` marks the valid completion tokens.

:func:`completion_logprobs` runs one forward pass and returns ``log softmax(z / T)`` at every
completion token (``z`` = raw logits, ``T`` the rollout temperature: the same distribution the
rollout engine reports), computing the LM head only on the ``C`` positions that predict
completion tokens (``logits_to_keep``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prism_lab.algos.token_stats import DEFAULT_CHUNK_ROWS, token_logprobs_and_entropy
from prism_lab.rollout.inputs import image_chunks_per_row, text_position_ids

__all__ = [
    "SequenceBatch",
    "completion_logprobs",
    "make_sequence_batch",
    "token_logprobs_from_logits",
]


@dataclass
class SequenceBatch:
    """Model inputs for prompt+completion sequences plus the completion layout."""

    inputs: dict[str, Tensor]  # input_ids, attention_mask, mm_token_type_ids, [pixel_values, image_grid_thw]
    completion_ids: Tensor  # [B, C], pad where response_mask == 0
    response_mask: Tensor  # [B, C] float 0/1
    prefix: dict[str, Tensor] | None = None  # the batch's UNIQUE prompts (left-padded), for shared-prefix forwards
    prefix_index: Tensor | None = None  # [B] row of ``prefix`` that each sequence continues

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum().item())

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            completion_ids=self.completion_ids.to(device),
            response_mask=self.response_mask.to(device),
            prefix={k: v.to(device) for k, v in self.prefix.items()} if self.prefix is not None else None,
            prefix_index=self.prefix_index.to(device) if self.prefix_index is not None else None,
        )


def make_sequence_batch(
    prompt_batch: dict,
    prompt_rows: Sequence[int],
    completions: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    image_chunks: list[tuple[list[Tensor], Tensor]] | None = None,
    trim: bool = True,
) -> SequenceBatch:
    """Sequence batch for ``completions[i]`` following prompt row ``prompt_rows[i]`` of ``prompt_batch``.

    ``image_chunks``: :func:`image_chunks_per_row` of ``prompt_batch`` (computed when None).
    """
    if len(prompt_rows) != len(completions):
        raise ValueError(f"{len(prompt_rows)} prompt rows for {len(completions)} completions")
    rows = torch.as_tensor(list(prompt_rows), dtype=torch.long)
    p_ids = prompt_batch["input_ids"][rows]
    p_mask = prompt_batch["attention_mask"][rows]
    p_mm = prompt_batch.get("mm_token_type_ids")
    p_mm = p_mm[rows] if p_mm is not None else torch.zeros_like(p_ids)
    if trim:
        used = p_mask.bool().any(dim=0)
        first = int(used.float().argmax().item()) if bool(used.any()) else 0
        p_ids, p_mask, p_mm = p_ids[:, first:], p_mask[:, first:], p_mm[:, first:]
    b = len(completions)
    c = max((len(x) for x in completions), default=0)
    c = max(c, 1)
    comp = torch.full((b, c), int(pad_token_id), dtype=p_ids.dtype)
    rmask = torch.zeros((b, c), dtype=torch.float32)
    for i, toks in enumerate(completions):
        if toks:
            comp[i, : len(toks)] = torch.as_tensor(list(toks), dtype=p_ids.dtype)
            rmask[i, : len(toks)] = 1.0
    inputs: dict[str, Tensor] = {
        "input_ids": torch.cat([p_ids, comp], dim=1),
        "attention_mask": torch.cat([p_mask, rmask.to(p_mask.dtype)], dim=1),
        "mm_token_type_ids": torch.cat([p_mm, torch.zeros((b, c), dtype=p_mm.dtype)], dim=1),
    }
    uniq: list[int] = []
    local: dict[int, int] = {}
    for r in rows.tolist():
        if r not in local:
            local[r] = len(uniq)
            uniq.append(r)
    prefix_index = torch.tensor([local[r] for r in rows.tolist()], dtype=torch.long)
    u_rows = torch.tensor(uniq, dtype=torch.long)
    u_mask = prompt_batch["attention_mask"][u_rows]
    u_first = int(u_mask.bool().any(dim=0).float().argmax().item()) if trim else 0
    prefix: dict[str, Tensor] = {
        "input_ids": prompt_batch["input_ids"][u_rows][:, u_first:],
        "attention_mask": u_mask[:, u_first:],
    }
    if prompt_batch.get("mm_token_type_ids") is not None:
        prefix["mm_token_type_ids"] = prompt_batch["mm_token_type_ids"][u_rows][:, u_first:]
    if prompt_batch.get("image_grid_thw") is not None:
        chunks = image_chunks if image_chunks is not None else image_chunks_per_row(prompt_batch)
        assert chunks is not None
        for target, which in ((inputs, rows.tolist()), (prefix, uniq)):
            pix, grid = [], []
            for r in which:
                pix.extend(chunks[r][0])
                grid.append(chunks[r][1])
            if pix:
                target["pixel_values"] = torch.cat(pix, dim=0)
                target["image_grid_thw"] = torch.cat(grid, dim=0)
    return SequenceBatch(inputs=inputs, completion_ids=comp, response_mask=rmask, prefix=prefix,
                         prefix_index=prefix_index)


def token_logprobs_from_logits(logits: Tensor, tokens: Tensor, *,
                               chunk_rows: int | None = DEFAULT_CHUNK_ROWS) -> Tensor:
    """``log softmax(logits)[tokens]`` along the last dim, via logsumexp, ``chunk_rows`` rows at a time."""
    return token_logprobs_and_entropy(logits, tokens, chunk_rows=chunk_rows)[0]


def completion_logprobs(
    model,
    batch: SequenceBatch,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    entropy_grad: bool = True,
    suppress_token_ids: Sequence[int] = (),
    shared_prefix: bool = True,
    chunk_rows: int | None = DEFAULT_CHUNK_ROWS,
) -> tuple[Tensor, Tensor | None]:
    """One forward pass: per-token log-probs ``[B, C]`` of the completions (0 on padding) and,
    when asked, the entropies ``[B, C]`` of ``softmax(z / T)``. Gradients flow when enabled.

    ``suppress_token_ids``: tokens the rollout engine never samples (vision placeholders,
    :func:`prism_lab.rollout.vision_token_ids`); their logits are masked out so the distribution
    equals the rollout policy's. ``entropy_grad=False`` computes the entropies without a graph
    (for logging only).

    ``shared_prefix`` (Qwen3-VL models): run each UNIQUE prompt of the batch once (with images),
    gather its KV cache for the sequences that continue it, and run only the completion tokens on
    top. Values and gradients equal the full forward (to float rounding); with ``n`` samples per
    prompt the prompt positions cost ``1/n`` of the full forward. Other models use the full forward.

    ``chunk_rows``: completion tokens whose ``[vocab]``-wide float32 working copies exist at once
    (:func:`prism_lab.algos.token_stats.token_logprobs_and_entropy`); None = the whole batch at once.
    """
    c = batch.completion_ids.shape[1]
    if shared_prefix and batch.prefix is not None and supports_shared_prefix(model):
        logits = _shared_prefix_logits(model, batch)
    else:
        inputs = batch.inputs
        if "image_grid_thw" not in inputs and "position_ids" not in inputs:
            # text-only: positions from the attention mask (left padding), as generate computes them
            inputs = {**inputs, "position_ids": text_position_ids(inputs["attention_mask"])}
        out = model(**inputs, use_cache=False, logits_to_keep=c + 1)
        logits = out.logits[:, :-1, :]  # position P-1+t predicts completion token t
    sup = None
    if suppress_token_ids:
        sup = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        sup[list(suppress_token_ids)] = True
    logp, ent = token_logprobs_and_entropy(logits, batch.completion_ids, temperature=temperature, suppress=sup,
                                           with_entropy=with_entropy, entropy_grad=entropy_grad, chunk_rows=chunk_rows)
    logp = logp * batch.response_mask.to(logp.dtype)
    return logp, ent


_SHARED_PREFIX_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")


def supports_shared_prefix(model) -> bool:
    """True for models whose (m)RoPE bookkeeping :func:`_shared_prefix_logits` reproduces (Qwen3-VL)."""
    return getattr(getattr(model, "config", None), "model_type", None) in _SHARED_PREFIX_MODEL_TYPES


def _shared_prefix_logits(model, batch: SequenceBatch) -> Tensor:
    """Logits ``[B, C, V]`` predicting every completion token, prompts run once each.

    The caches of :mod:`prism_lab.trainers.prefix_cache` are replay-safe, so this also holds with the
    decoder layers checkpointed in training (``gradient_checkpointing``).
    """
    from prism_lab.trainers.prefix_cache import RecordingCache, cache_through_checkpointing

    assert batch.prefix is not None and batch.prefix_index is not None
    pre = dict(batch.prefix)
    idx = batch.prefix_index
    has_images = "image_grid_thw" in pre
    if not has_images:
        pre["position_ids"] = text_position_ids(pre["attention_mask"])
    recorded = RecordingCache()
    with cache_through_checkpointing(model):
        out = model(**pre, cache=recorded, use_cache=True, logits_to_keep=1)
        first = out.logits[:, -1:, :].index_select(0, idx)  # predicts completion token 0
        c = batch.completion_ids.shape[1]
        # One completion token needs no second pass, but it runs anyway on that token (its logits dropped, kept in
        # the graph): every batch then makes the same two model calls, as FSDP needs when the ranks' batches differ.
        steps = max(c - 1, 1)
        deltas = getattr(getattr(model, "model", None), "rope_deltas", None) if has_images else None
        u = pre["attention_mask"].shape[0]
        if deltas is None:
            deltas = torch.zeros((u, 1), dtype=torch.long, device=first.device)
        cache = recorded.gather(idx)
        del recorded, out
        p_mask = pre["attention_mask"].index_select(0, idx)
        r_mask = batch.response_mask[:, :steps].to(p_mask.dtype)
        attn = torch.cat([p_mask, r_mask], dim=1)
        start = p_mask.sum(dim=1, keepdim=True) + deltas.view(-1, 1).index_select(0, idx)
        pos = start + torch.arange(steps, device=start.device).view(1, -1)
        pos = pos.unsqueeze(0).expand(3, -1, -1)
        rest = model(input_ids=batch.completion_ids[:, :steps], attention_mask=attn, position_ids=pos, cache=cache,
                     use_cache=True)
    return torch.cat([first, rest.logits], dim=1)[:, :c]
