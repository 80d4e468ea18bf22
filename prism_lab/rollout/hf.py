"""The default engine: Hugging Face models sampled with a prefill-once, copy-the-cache loop (see
``HFGenerateEngine``); the contract is in :mod:`prism_lab.rollout.types`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch

from prism_lab.rollout.inputs import (
    build_prompt_inputs,
    eos_token_ids,
    pad_token_id,
    repeat_batch,
    text_position_ids,
    vision_token_ids,
)
from prism_lab.rollout.types import Prompt, Rollout

_FAST_MODEL_TYPES = ("qwen3_vl", "qwen3_vl_moe")


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
        #: ``all_finished(done_here) -> done_everywhere``: with an FSDP-sharded model every rank must run
        #: the same number of forward passes, so decoding stops only when every rank is done (the
        #: trainers set it under torchrun; ``synced_gpus`` is the same idea in ``generate``).
        self.all_finished: Callable[[bool], bool] = _done_here
        self.synced = False

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
                if self.all_finished(bool(finished.all())) or step + 1 == max_new_tokens:
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
        if self.synced:
            gen_kwargs["synced_gpus"] = True
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


def _done_here(done: bool) -> bool:
    return done
