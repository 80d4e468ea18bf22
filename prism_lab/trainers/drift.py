"""Drift of a checkpoint, measured on held-out supervision (the paper's thesis as numbers).

PRISM's premise is that SFT "neither preserves the model's original capabilities nor faithfully
matches the supervision distribution" (PRISM paper, section 1). Three distances make that concrete,
all on a held-out teacher set (SFT-format rows the training never saw):

- ``teacher_nll``: per-token negative log-likelihood of the held-out teacher responses (teacher
  forcing, the SFT loss on unseen rows): the distance *to the supervision distribution*.
- ``kl_from_base``: KL(base || checkpoint) per token, estimated on the base checkpoint's own samples
  for the held-out prompts: ``sum_t [log p_base(y_t) - log p_ckpt(y_t)] / #tokens`` with ``y ~ base``
  (the unbiased "k1" Monte-Carlo estimator, Schulman 2020, "Approximating KL Divergence"): the
  distance *from the original capabilities*. The base's samples and log-probs are drawn once per
  base and reused for every checkpoint of its chains.
- ``disc_gap_caption`` / ``disc_gap_cot``: where the chain has a discriminator, its mean score
  margin teacher − checkpoint on the held-out prompts (the checkpoint's own responses, split at the
  caption boundary), as the alignment stage measures it during training (section 6).

Everything is eval-mode, no gradients. Lives beside the trainers because it reuses their teacher
forcing (``trainers.logprobs``) and discriminator scoring (``trainers.disc_warmup``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prism_lab.trainers.logprobs import completion_logprobs, make_sequence_batch

__all__ = ["base_samples", "disc_gaps", "heldout_prompts", "kl_estimate", "sequence_logprobs", "teacher_nll"]


def kl_estimate(base_logprobs: Sequence[Sequence[float]], ckpt_logprobs: Sequence[Sequence[float]]) -> dict[str, float]:
    """k1 estimate of KL(base || ckpt) from per-token log-probs of base samples under both models.

    Returns ``kl_per_token`` (total log-ratio / total tokens), ``kl_per_sequence`` (mean over samples of
    the summed log-ratio) and ``tokens``. Sequences must have equal lengths pairwise.
    """
    if len(base_logprobs) != len(ckpt_logprobs):
        raise ValueError(f"{len(base_logprobs)} base sequences vs {len(ckpt_logprobs)} checkpoint sequences")
    total, tokens, per_seq = 0.0, 0, []
    for i, (b, c) in enumerate(zip(base_logprobs, ckpt_logprobs)):
        if len(b) != len(c):
            raise ValueError(f"sequence {i}: {len(b)} base log-probs vs {len(c)} checkpoint log-probs")
        s = float(sum(x - y for x, y in zip(b, c)))
        per_seq.append(s)
        total += s
        tokens += len(b)
    if tokens == 0:
        return {"kl_per_token": float("nan"), "kl_per_sequence": float("nan"), "tokens": 0.0}
    return {"kl_per_token": total / tokens, "kl_per_sequence": sum(per_seq) / len(per_seq), "tokens": float(tokens)}


def heldout_prompts(examples: Sequence[Any]) -> list:
    """Rollout prompts of SFT examples: every message before the last assistant turn, with the images."""
    from prism_lab.rollout import Prompt

    out = []
    for ex in examples:
        msgs = list(ex.messages)
        while msgs and msgs[-1].get("role") == "assistant":
            msgs.pop()
        out.append(Prompt(messages=msgs, images=list(ex.load_images())))
    return out


@torch.no_grad()
def teacher_nll(model, processor, examples: Sequence[Any], *, batch_size: int = 8) -> dict[str, float]:
    """Per-token NLL of the assistant tokens of ``examples`` (SFT labels), summed then divided."""
    from prism_lab.data.collate import IGNORE_INDEX, SFTCollator

    collate = SFTCollator(processor)
    total, count = 0.0, 0
    was = model.training
    model.eval()
    try:
        for i in range(0, len(examples), max(1, batch_size)):
            batch = collate(list(examples[i:i + batch_size]))
            labels = batch.pop("labels")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            logits = model(**batch, use_cache=False).logits[:, :-1].float()
            target = labels[:, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    ignore_index=IGNORE_INDEX, reduction="sum")
            total += float(nll)
            count += int((target != IGNORE_INDEX).sum())
    finally:
        model.train(was)
    return {"teacher_nll": total / count if count else float("nan"), "teacher_tokens": float(count)}


@torch.no_grad()
def sequence_logprobs(model, processor, prompts: Sequence[Any], completions: Sequence[Sequence[int]], *,
                      batch_size: int = 8) -> list[list[float]]:
    """Per-token log-probs (temperature 1) of ``completions[i]`` after ``prompts[i]`` under ``model``."""
    from prism_lab.rollout import build_prompt_inputs, pad_token_id, vision_token_ids

    out: list[list[float]] = []
    pad = pad_token_id(model, processor)
    suppress = vision_token_ids(model)
    for i in range(0, len(prompts), max(1, batch_size)):
        chunk = list(prompts[i:i + batch_size])
        comps = [list(c) for c in completions[i:i + batch_size]]
        pb = build_prompt_inputs(processor, chunk)
        sb = make_sequence_batch(pb, list(range(len(chunk))), comps, pad_token_id=pad).to(model.device)
        lp, _ = completion_logprobs(model, sb, suppress_token_ids=suppress)
        for j, c in enumerate(comps):
            out.append([float(x) for x in lp[j, : len(c)].tolist()])
    return out


def base_samples(model, processor, prompts: Sequence[Any], *, max_new_tokens: int, seed: int,
                 batch_size: int = 8) -> list[list[int]]:
    """One sample per prompt from ``model`` at temperature 1, top-p 1 (its own distribution)."""
    from prism_lab.rollout import make_engine

    engine = make_engine(model, processor, kind="hf")
    rolls = engine.generate(list(prompts), n=1, max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0,
                            do_sample=True, seed=seed, batch_size=max(1, batch_size))
    return [list(r.token_ids) for r in sorted(rolls, key=lambda r: r.prompt_index)]


def disc_gaps(disc, policy, processor, examples: Sequence[Any], *, max_new_tokens: int, seed: int,
              system_prompt: str | None, batch_size: int = 8) -> dict[str, float]:
    """Mean discriminator margin teacher − ``policy`` per segment (caption, cot) on the held-out examples.

    The policy answers each held-out prompt once (T=1, as the alignment stage's rollouts); its response is
    split at the caption boundary like the stage's (``warmup_pairs.build_comparisons``). Teacher responses
    that do not follow the caption/think/answer format are left out."""
    from prism_lab.data.warmup_jsonl import WarmupPair
    from prism_lab.prompts import IMAGE_PLACEHOLDER, SPLIT_RE
    from prism_lab.trainers.disc_inputs import disc_tokens
    from prism_lab.trainers.disc_warmup import evaluate_pairs
    from prism_lab.trainers.warmup_pairs import build_comparisons

    pairs = []
    for line, ex in enumerate(examples):
        m = SPLIT_RE.match(str(ex.messages[-1].get("content", "")))
        user = next((m_ for m_ in reversed(ex.messages) if m_.get("role") == "user"), None)
        if m is None or user is None or len(ex.images) > 1:
            continue
        prompt = str(user["content"]).replace(IMAGE_PLACEHOLDER, "")
        image = ex.images[0] if ex.images else None
        for kind, text in (("caption", m.group(1)), ("cot", m.group(2))):
            pairs.append(WarmupPair(kind=kind, prompt=prompt, image=image, teacher=text, student="", line=line,
                                    source="heldout"))
    if not pairs:
        return {}
    comps, _ = build_comparisons(pairs, processor, student_source="policy", policy=policy, system_prompt=system_prompt,
                                 max_new_tokens=max_new_tokens, seed=seed, rollout_batch_size=batch_size)
    res = evaluate_pairs(disc, processor, comps, toks=disc_tokens(processor), batch_size=batch_size)
    return {f"disc_gap_{k}": res[f"heldout_gap_{k}"] for k in ("caption", "cot") if f"heldout_gap_{k}" in res}
