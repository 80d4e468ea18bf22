"""Rollout engines: sample ``n`` completions per multimodal prompt, with optional log-probs.

Contract shared by every engine (HF here, vLLM in :mod:`prism_lab.rollout_vllm`):

- ``generate(prompts, n=..., ...)`` returns ``len(prompts) * n`` :class:`Rollout` objects, grouped by
  prompt (the ``n`` copies of prompt 0 first, then prompt 1, ...); ``Rollout.prompt_index`` is the
  index into ``prompts``.
- ``token_ids`` are the completion tokens only: no prompt, no padding, and the end-of-turn token
  (the checkpoint's ``generation_config.eos_token_id``) included as the last token when it was
  generated. ``finish_reason`` is ``"stop"`` in that case and ``"length"`` when ``max_new_tokens``
  tokens were produced without an eos.
- ``text`` is ``decode(token_ids, skip_special_tokens=True)``.
- ``logprobs`` (when ``return_logprobs=True``): for every completion token ``y_t``,
  ``log softmax(z_t / T)[y_t]`` where ``z_t`` are the model's RAW next-token logits (before any
  logits processor) with the vision placeholder tokens masked out (see below) and ``T`` the
  sampling temperature; ``T = 1`` for greedy decoding
  (``temperature == 0`` or ``do_sample=False``). Top-p / top-k truncation is NOT applied to these
  log-probs: they are the log-probs of the temperature-scaled policy ``pi_T``, which is exactly the
  sampling distribution when ``top_p == 1`` (the RL setting) and is the distribution the RL trainer
  recomputes in its forward pass (it divides logits by the same ``T``, as verl does). So with
  ``T = 1`` and ``top_p = 1`` they are PPO's ``old_logp`` for an on-policy update.

Vision placeholder tokens (``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_start|>``,
``<|vision_end|>``, read from the model config) are never sampled: their logits are set to -inf
(``suppress_tokens``). A completion containing an image placeholder could not be fed back through
the model (Qwen3-VL matches placeholder tokens to image features), and a trained policy gives them
~0 probability anyway. The policy is therefore the model restricted to the other tokens, and the
trainer's forward pass applies the same mask (:func:`vision_token_ids`).

Prompts: ``Prompt.messages`` are chat messages whose content is either a string, in which each
``<image>`` placeholder marks one image (the RL parquet convention), or a list of content items
(``{"type": "image"}`` / ``{"type": "text", "text": ...}``). ``Prompt.images`` are the PIL images in
order of appearance.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from prism_lab.errors import ConfigError, PrismError

__all__ = [
    "IMAGE_PLACEHOLDER",
    "HFGenerateEngine",
    "Prompt",
    "Rollout",
    "RolloutEngine",
    "build_prompt_inputs",
    "eos_token_ids",
    "make_engine",
    "to_content_messages",
    "vision_token_ids",
    "vllm_available",
]

from prism_lab.prompts import IMAGE_PLACEHOLDER, split_image_placeholders  # noqa: E402


@dataclass
class Prompt:
    """One multimodal prompt: chat messages and the PIL (RGB) images they refer to, in order."""

    messages: list[dict]
    images: list = field(default_factory=list)


@dataclass
class Rollout:
    """One sampled completion of ``prompts[prompt_index]``."""

    prompt_index: int
    token_ids: list[int]
    text: str
    logprobs: list[float] | None
    finish_reason: str  # "stop" | "length"


@runtime_checkable
class RolloutEngine(Protocol):
    """What the RL trainer and the evaluator need from a generator."""

    def generate(
        self,
        prompts: list[Prompt],
        *,
        n: int = 1,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        seed: int | None = None,
        return_logprobs: bool = False,
        batch_size: int = 16,
    ) -> list[Rollout]: ...


# --------------------------------------------------------------------------------------------
# Prompt -> processor batch
# --------------------------------------------------------------------------------------------


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
    cfg = getattr(model, "config", None)
    ids = []
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        v = getattr(cfg, name, None) if cfg is not None else None
        if isinstance(v, int) and v >= 0:
            ids.append(v)
    return sorted(set(ids))


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
    if "image_grid_thw" in batch and batch["image_grid_thw"] is not None:
        grid = batch["image_grid_thw"]
        pix = batch["pixel_values"]
        patches = grid.prod(dim=-1).tolist()
        chunks = list(torch.split(pix, patches, dim=0))
        # images per prompt row: count vision-start tokens is fragile; count image pad runs instead.
        per_row = _images_per_row(batch)
        pix_out, grid_out = [], []
        j = 0
        for cnt in per_row:
            rows_pix = chunks[j : j + cnt]
            rows_grid = grid[j : j + cnt]
            for _ in range(n):
                pix_out.extend(rows_pix)
                grid_out.append(rows_grid)
            j += cnt
        out["pixel_values"] = torch.cat(pix_out, dim=0) if pix_out else pix[:0]
        out["image_grid_thw"] = torch.cat(grid_out, dim=0)
    return out


def _images_per_row(batch: dict) -> list[int]:
    """Number of images in each row (runs of image tokens in mm_token_type_ids == 1)."""
    mm = batch.get("mm_token_type_ids")
    if mm is None:
        raise PrismError("processor batch has images but no mm_token_type_ids")
    is_img = (mm == 1).long()
    starts = is_img[:, 1:] & (1 - is_img[:, :-1])
    return (starts.sum(dim=1) + is_img[:, 0]).tolist()


# --------------------------------------------------------------------------------------------
# HF engine
# --------------------------------------------------------------------------------------------


_FAST_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(m)RoPE positions ``[3, B, L]`` of a text-only, left-padded batch: ``cumsum(mask) - 1`` (0 on padding),
    as ``generate`` computes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 0)
    return pos.unsqueeze(0).expand(3, -1, -1)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row outside the smallest set of tokens with cumulative probability >= top_p."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(dim=-1)
    remove = (cum - sorted_p) >= top_p  # keep tokens until the mass before them reaches top_p (>= 1 kept)
    sorted_p = sorted_p.masked_fill(remove, 0.0)
    return torch.zeros_like(probs).scatter_(-1, idx, sorted_p)


def _is_greedy(temperature: float, do_sample: bool) -> bool:
    return (not do_sample) or temperature <= 0.0


class HFGenerateEngine:
    """Batched ``model.generate`` with KV cache and left padding (the CPU / default engine).

    All ``n`` copies of a prompt go into the same generate call; prompts are processed once and
    their tensors repeated (see :func:`repeat_batch`). ``batch_size`` caps the sequences per call
    (rounded up to whole prompts).
    """

    kind = "hf"

    def __init__(self, model, processor, *, use_hf_generate: bool | None = None) -> None:
        self.model = model
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        # The own decode loop relies on Qwen3-VL's (m)RoPE bookkeeping; anything else uses generate().
        self.use_hf_generate = (model_type not in _FAST_MODEL_TYPES) if use_hf_generate is None else use_hf_generate
        self.processor = processor
        self.eos_ids = eos_token_ids(model, processor)
        self.pad_id = pad_token_id(model, processor)
        self.suppress_token_ids = vision_token_ids(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: list[Prompt],
        *,
        n: int = 1,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        seed: int | None = None,
        return_logprobs: bool = False,
        batch_size: int = 16,
    ) -> list[Rollout]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            return []
        prompts_per_call = max(1, batch_size // n)
        rng_ctx = contextlib.nullcontext()
        if seed is not None:
            devices = [self.device] if self.device.type == "cuda" else []
            rng_ctx = torch.random.fork_rng(devices=devices)
        out: list[Rollout] = []
        with rng_ctx:
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(prompts), prompts_per_call):
                chunk = prompts[start : start + prompts_per_call]
                out.extend(
                    self._generate_chunk(
                        chunk, start, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        do_sample=do_sample, return_logprobs=return_logprobs,
                    )
                )
        return out

    @torch.no_grad()
    def _generate_chunk(self, prompts: list[Prompt], offset: int, **kw: Any) -> list[Rollout]:
        if self.use_hf_generate:
            return self._hf_generate_chunk(prompts, offset, **kw)
        return self._decode_chunk(prompts, offset, **kw)

    @torch.no_grad()
    def _decode_chunk(
        self, prompts: list[Prompt], offset: int, *, n: int, max_new_tokens: int, temperature: float,
        top_p: float, do_sample: bool, return_logprobs: bool,
    ) -> list[Rollout]:
        """Own sampling loop: one shared prefill per unique prompt, KV cache expanded to the ``n``
        copies, a preallocated (static) KV cache and attention mask, no logits-processor stack."""
        from transformers import StaticCache

        model = self.model
        dev = self.device
        batch = build_prompt_inputs(self.processor, prompts)
        batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        mask_p = batch["attention_mask"]
        bu, plen = mask_p.shape
        b = bu * n
        total = plen + max_new_tokens
        was_training = model.training
        model.eval()
        try:
            cache = StaticCache(config=model.config, max_cache_len=total)
            fwd = dict(batch)
            if "image_grid_thw" not in batch:
                fwd["position_ids"] = text_position_ids(mask_p)
            out = model(**fwd, cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :].float()
            deltas = getattr(getattr(model, "model", None), "rope_deltas", None)
            if "image_grid_thw" not in batch or deltas is None:
                deltas = torch.zeros((bu, 1), dtype=torch.long, device=dev)
            # expand the prefilled cache, the logits and the per-row state to the n copies
            if n > 1:
                for layer in cache.layers:
                    layer.keys = layer.keys.repeat_interleave(n, dim=0)
                    layer.values = layer.values.repeat_interleave(n, dim=0)
                    layer.batch_size = b
                logits = logits.repeat_interleave(n, dim=0)
                deltas = deltas.repeat_interleave(n, dim=0)
            mask = torch.zeros((b, total), dtype=mask_p.dtype, device=dev)
            mask[:, :plen] = mask_p.repeat_interleave(n, dim=0)
            next_pos = mask[:, :plen].sum(dim=1, keepdim=True) + deltas.view(b, 1)  # [b, 1]
            greedy = _is_greedy(temperature, do_sample)
            t = 1.0 if greedy else float(temperature)
            sup = None
            if self.suppress_token_ids:
                sup = torch.zeros(logits.shape[-1], dtype=torch.bool, device=dev)
                sup[self.suppress_token_ids] = True
            eos = torch.tensor(self.eos_ids, device=dev)
            tokens = torch.full((b, max_new_tokens), self.pad_id, dtype=torch.long, device=dev)
            lps = torch.zeros((b, max_new_tokens), dtype=torch.float32, device=dev) if return_logprobs else None
            finished = torch.zeros(b, dtype=torch.bool, device=dev)
            steps = 0
            for step in range(max_new_tokens):
                z = logits
                if sup is not None:
                    z = z.masked_fill(sup, float("-inf"))
                if t != 1.0:
                    z = z / t
                logp = torch.log_softmax(z, dim=-1)
                if greedy:
                    tok = logp.argmax(dim=-1)
                else:
                    probs = logp.exp()
                    if top_p < 1.0:
                        probs = _top_p_filter(probs, top_p)
                    tok = torch.multinomial(probs, 1).squeeze(1)
                tok = torch.where(finished, torch.full_like(tok, self.pad_id), tok)
                tokens[:, step] = tok
                if lps is not None:
                    lps[:, step] = logp.gather(1, tok.unsqueeze(1)).squeeze(1)
                finished = finished | torch.isin(tok, eos)
                steps = step + 1
                if bool(finished.all()) or step + 1 == max_new_tokens:
                    break
                mask[:, plen + step] = 1
                pos = next_pos.view(1, b, 1).expand(3, b, 1)
                out = model(input_ids=tok.unsqueeze(1), attention_mask=mask[:, : plen + step + 1], position_ids=pos,
                            cache=cache, use_cache=True)
                logits = out.logits[:, -1, :].float()
                next_pos = next_pos + 1
        finally:
            if was_training:
                model.train()
        seqs = tokens[:, :steps]
        return self._to_rollouts(seqs, lps[:, :steps] if lps is not None else None, offset, n, max_new_tokens)

    @torch.no_grad()
    def _hf_generate_chunk(
        self, prompts: list[Prompt], offset: int, *, n: int, max_new_tokens: int, temperature: float,
        top_p: float, do_sample: bool, return_logprobs: bool,
    ) -> list[Rollout]:
        batch = build_prompt_inputs(self.processor, prompts)
        batch = repeat_batch(batch, n)
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        greedy = _is_greedy(temperature, do_sample)
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            use_cache=True,
            return_dict_in_generate=True,
            output_logits=return_logprobs,
            suppress_tokens=self.suppress_token_ids or None,
        )
        if greedy:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            gen_kwargs.update(temperature=float(temperature), top_p=float(top_p), top_k=0)
        was_training = self.model.training
        self.model.eval()
        try:
            res = self.model.generate(**batch, **gen_kwargs)
        finally:
            if was_training:
                self.model.train()
        prompt_len = batch["input_ids"].shape[1]
        seqs = res.sequences[:, prompt_len:]
        lp_mat = None
        if return_logprobs:
            t = 1.0 if greedy else float(temperature)
            logits = torch.stack(res.logits, dim=1).float()  # [B, L, V], raw logits
            if self.suppress_token_ids:
                logits[..., self.suppress_token_ids] = float("-inf")
            if t != 1.0:
                logits = logits / t
            lp_mat = torch.log_softmax(logits, dim=-1).gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
        return self._to_rollouts(seqs, lp_mat, offset, n, max_new_tokens)

    def _to_rollouts(self, seqs: torch.Tensor, lp_mat: torch.Tensor | None, offset: int, n: int,
                     max_new_tokens: int) -> list[Rollout]:
        eos = torch.tensor(self.eos_ids, device=seqs.device)
        is_eos = torch.isin(seqs, eos)
        has_eos = is_eos.any(dim=1)
        first = torch.where(has_eos, is_eos.float().argmax(dim=1), torch.full_like(has_eos, seqs.shape[1], dtype=torch.long))
        lengths = torch.where(has_eos, first + 1, first).tolist()
        rows = seqs.tolist()
        lps = lp_mat.tolist() if lp_mat is not None else None
        tok = self.processor.tokenizer
        out = []
        for r, (row, length) in enumerate(zip(rows, lengths)):
            ids = row[:length]
            out.append(
                Rollout(
                    prompt_index=offset + r // n,
                    token_ids=ids,
                    text=tok.decode(ids, skip_special_tokens=True),
                    logprobs=lps[r][:length] if lps is not None else None,
                    finish_reason="stop" if has_eos[r] else "length",
                )
            )
        return out


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def vllm_available() -> bool:
    """True when the vllm package is importable (says nothing about a GPU)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def make_engine(model, processor, kind: str = "auto", **kwargs: Any) -> RolloutEngine:
    """A rollout engine for ``model``.

    ``kind``: ``"hf"`` (transformers generate), ``"vllm"`` (requires vllm and a GPU; the engine is
    built from a checkpoint directory, ``kwargs["checkpoint_dir"]``, or from ``model`` saved to a
    temporary directory), or ``"auto"``: vLLM when it is installed AND a GPU is present, else HF.
    """
    if kind not in ("auto", "hf", "vllm"):
        raise ConfigError(f"unknown rollout engine {kind!r}; expected auto, hf or vllm")
    if kind == "auto":
        kind = "vllm" if (vllm_available() and torch.cuda.is_available()) else "hf"
    if kind == "hf":
        return HFGenerateEngine(model, processor)
    if not vllm_available():
        raise PrismError(
            "rollout_engine 'vllm' was requested but vllm is not installed; install vllm (GPU only) or set "
            "rollout_engine: hf (or auto)"
        )
    if not torch.cuda.is_available():
        raise PrismError("rollout_engine 'vllm' needs a CUDA GPU; none is visible. Use rollout_engine: hf (or auto)")
    from prism_lab.rollout_vllm import VLLMEngine

    return VLLMEngine.from_model(model, processor, **kwargs)
