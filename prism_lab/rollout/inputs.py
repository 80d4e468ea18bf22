"""Prompt -> processor batch: chat messages with images to the tensors every engine and trainer feeds
the model, plus the token ids (eos, pad, vision placeholders) read from a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from prism_lab.errors import ConfigError, PrismError
from prism_lab.prompts import IMAGE_PLACEHOLDER, split_image_placeholders
from prism_lab.rollout.types import Prompt


def _content_items(content: Any) -> list[dict]:
    if isinstance(content, list):
        return content
    if not isinstance(content, str):
        raise PrismError(f"message content must be a string or a list of content items, got {type(content).__name__}")
    return split_image_placeholders(content)


def to_content_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages with every string content that holds ``<image>`` turned into a content list.

    Strings without a placeholder are kept as strings; content lists are passed through.
    """
    out = []
    for m in messages:
        c = m.get("content")
        if isinstance(c, str) and IMAGE_PLACEHOLDER not in c:
            out.append(dict(m))
        else:
            out.append({**m, "content": _content_items(c)})
    return out


def _count_images(messages: Sequence[dict]) -> int:
    n = 0
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            n += c.count(IMAGE_PLACEHOLDER)
        elif isinstance(c, list):
            n += sum(1 for it in c if isinstance(it, dict) and (it.get("type") == "image" or "image" in it))
    return n


def prompt_texts(processor, prompts: Sequence[Prompt], *, add_generation_prompt: bool = True) -> list[str]:
    """Chat-templated prompt strings (one per prompt)."""
    texts = []
    for i, p in enumerate(prompts):
        k = _count_images(p.messages)
        if k != len(p.images):
            raise PrismError(f"prompt {i}: {k} image placeholders but {len(p.images)} images")
        texts.append(
            processor.apply_chat_template(
                to_content_messages(p.messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        )
    return texts


def build_prompt_inputs(processor, prompts: Sequence[Prompt], *, add_generation_prompt: bool = True) -> dict:
    """Left-padded processor batch for ``prompts``: input_ids, attention_mask, mm_token_type_ids and,
    when any prompt has images, pixel_values and image_grid_thw (images flattened in prompt order)."""
    texts = prompt_texts(processor, prompts, add_generation_prompt=add_generation_prompt)
    images = [im for p in prompts for im in p.images]
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        batch = processor(text=texts, images=images or None, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = old_side
    return dict(batch)


def eos_token_ids(model, processor) -> list[int]:
    """End-of-generation ids: the checkpoint's generation_config.eos_token_id (else the tokenizer's eos)."""
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if eos is None:
        eos = processor.tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("neither the generation config nor the tokenizer defines an eos token")
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def vision_token_ids(model) -> list[int]:
    """Ids of the vision placeholder tokens from the model config (suppressed during rollouts)."""
    from prism_lab.models.portable import vision_token_ids as from_config

    return from_config(getattr(model, "config", None))


def pad_token_id(model, processor) -> int:
    gc = getattr(model, "generation_config", None)
    pad = getattr(gc, "pad_token_id", None) if gc is not None else None
    if pad is None:
        pad = processor.tokenizer.pad_token_id
    if pad is None:
        pad = eos_token_ids(model, processor)[0]
    return int(pad)


def repeat_batch(batch: dict, n: int) -> dict:
    """Each prompt row repeated ``n`` times (consecutively), images included.

    Text tensors are ``repeat_interleave``-d over rows; ``pixel_values`` (patches of all images,
    concatenated) and ``image_grid_thw`` are repeated per prompt so that row order and image order
    stay consistent. Avoids re-running the image processor for every copy.
    """
    if n == 1:
        return dict(batch)
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if k in ("pixel_values", "image_grid_thw"):
            continue
        out[k] = v.repeat_interleave(n, dim=0) if isinstance(v, torch.Tensor) else v
    chunks = image_chunks_per_row(batch)
    if chunks is not None:
        pix_out, grid_out = [], []
        for row_pix, row_grid in chunks:
            for _ in range(n):
                pix_out.extend(row_pix)
                grid_out.append(row_grid)
        out["pixel_values"] = torch.cat(pix_out, dim=0) if pix_out else batch["pixel_values"][:0]
        out["image_grid_thw"] = torch.cat(grid_out, dim=0)
    return out


def image_chunks_per_row(prompt_batch: dict) -> list[tuple[list[Tensor], Tensor]] | None:
    """For each prompt row: (list of its images' patch tensors, its image_grid_thw rows); None without images."""
    grid = prompt_batch.get("image_grid_thw")
    if grid is None:
        return None
    pix = prompt_batch["pixel_values"]
    chunks = list(torch.split(pix, grid.prod(dim=-1).tolist(), dim=0))
    mm = prompt_batch.get("mm_token_type_ids")
    if mm is None:
        raise PrismError("processor batch has images but no mm_token_type_ids")
    is_img = (mm == 1).long()
    starts = is_img[:, 1:] & (1 - is_img[:, :-1])
    per_row = (starts.sum(dim=1) + is_img[:, 0]).tolist()
    out, j = [], 0
    for cnt in per_row:
        out.append((chunks[j : j + cnt], grid[j : j + cnt]))
        j += cnt
    if j != len(chunks):
        raise PrismError(f"found {j} image token runs but {len(chunks)} images in the prompt batch")
    return out


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(m)RoPE positions ``[3, B, L]`` of a text-only, left-padded batch: ``cumsum(mask) - 1`` (0 on padding),
    as ``generate`` computes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 0)
    return pos.unsqueeze(0).expand(3, -1, -1)
