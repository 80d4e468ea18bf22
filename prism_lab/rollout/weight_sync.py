"""The policy's weights, whole, handed to a colocated rollout engine: one tensor at a time, in buckets.

Under FSDP2 each rank holds a shard of every parameter (a ``DTensor``). To give its local engine the whole
model, every rank walks the parameters in the same order (``named_parameters``: the same module tree on
every rank) and calls ``full_tensor()`` on each, an all-gather that every rank must join; the gathered
tensors are cast to the engine's dtype and handed over in buckets of at most ``bucket_bytes``, so only one
bucket of full tensors exists at a time (verl streams its sync the same way; TRL hands them one by one).

Parameters kept in host memory (FSDP2's ``CPUOffloadPolicy``) are copied to ``device`` for the all-gather;
the copy is dropped once the bucket is loaded, so the offloaded shards themselves never move.

Names: an engine's ``load_weights`` takes the checkpoint's names, the ones ``save_pretrained`` writes and
vLLM reads when it builds the engine from that checkpoint. vLLM's Qwen3-VL model maps them itself
(``hf_to_vllm_mapper`` in vllm/model_executor/models/qwen3_vl.py: ``model.visual.`` -> ``visual.``, the
vision tower with its mergers and deepstack mergers; ``model.language_model.`` ->
``language_model.model.``; ``lm_head.`` -> ``language_model.lm_head.``). So a parameter's name here is its
name in the policy with the wrappers' path segments removed (activation checkpointing, ``torch.compile``),
and a name outside those three prefixes is refused instead of being silently dropped by the engine.

Tied embeddings: ``named_parameters`` lists a shared parameter once, under its first name
(``model.language_model.embed_tokens.weight``), so ``lm_head.weight`` is not sent twice; vLLM ties its
head to the embedding for such a config and skips ``lm_head`` when loading it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch

__all__ = ["DEFAULT_BUCKET_BYTES", "VLLM_QWEN3_VL_PREFIXES", "WeightLoader", "buckets", "checkpoint_name",
           "full_parameters", "push_weights"]

#: Bytes of full tensors handed to the engine at once (verl's default bucket is 512 MB as well).
DEFAULT_BUCKET_BYTES = 512 << 20

#: The checkpoint prefixes vLLM's Qwen3-VL maps (vision tower + mergers, language model, output head).
VLLM_QWEN3_VL_PREFIXES = ("model.visual.", "model.language_model.", "lm_head.")

#: Path segments that wrappers add to parameter names and that a checkpoint never has.
_WRAPPER_SEGMENTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


class WeightLoader(Protocol):
    """What the sync needs from an engine: vLLM's ``model.load_weights`` takes the same pairs."""

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> Any: ...


def checkpoint_name(param_name: str, prefixes: tuple[str, ...] = VLLM_QWEN3_VL_PREFIXES) -> str:
    """The checkpoint name of a policy parameter (wrapper segments removed); ValueError outside ``prefixes``."""
    name = ".".join(part for part in param_name.split(".") if part not in _WRAPPER_SEGMENTS)
    if not name.startswith(prefixes):
        raise ValueError(f"parameter {param_name!r} is not part of a Qwen3-VL checkpoint (expected a name under "
                         f"{', '.join(prefixes)}); the rollout engine could not load it")
    return name


def _full(param: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The whole value of ``param`` on ``device``: an all-gather for a DTensor (collective), else itself."""
    t = param.detach()
    if t.device != device:
        t = t.to(device)  # an offloaded shard: a copy on the device, dropped with the bucket
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_parameters(model: torch.nn.Module, *, device: torch.device, dtype: torch.dtype | None,
                    prefixes: tuple[str, ...] = VLLM_QWEN3_VL_PREFIXES) -> Iterator[tuple[str, torch.Tensor]]:
    """``(checkpoint name, whole tensor)`` for every parameter of ``model``, in ``named_parameters`` order,
    cast to ``dtype`` (None: as trained). Every rank of a sharded model must consume it whole: each step
    is a collective."""
    for name, param in model.named_parameters():
        full = _full(param, device)
        yield checkpoint_name(name, prefixes), (full if dtype is None else full.to(dtype))


def buckets(items: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``items`` in order, grouped so that a group's tensors hold at most ``max_bytes`` (a larger tensor goes
    alone)."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    group: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in items:
        nbytes = t.numel() * t.element_size()
        if group and size + nbytes > max_bytes:
            yield group
            group, size = [], 0
        group.append((name, t))
        size += nbytes
    if group:
        yield group


def push_weights(model: torch.nn.Module, engine: WeightLoader, *, device: torch.device,
                 dtype: torch.dtype | None = torch.bfloat16, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> int:
    """Hand every parameter of ``model``, whole, to ``engine.load_weights`` in buckets; returns how many.
    Collective under FSDP2: every rank calls it at the same point."""
    sent = 0
    with torch.no_grad():
        for bucket in buckets(full_parameters(model, device=device, dtype=dtype), bucket_bytes):
            engine.load_weights(bucket)
            sent += len(bucket)
    return sent
