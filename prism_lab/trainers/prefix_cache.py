"""KV caches for the shared-prefix forward that stay correct under activation checkpointing.

The shared-prefix forward (:func:`prism_lab.trainers.logprobs.completion_logprobs`) makes two model
calls: the unique prompts, whose keys/values every layer records, then the completions, which attend
to those keys/values gathered per sequence. A plain ``DynamicCache`` cannot be used when the decoder
layers are checkpointed in training: transformers drops the cache argument of a checkpointed layer
(its backward replays the layer, and a replayed ``DynamicCache.update`` would append a second time),
so the prompt pass records nothing.

The two caches here make a replay harmless, so the layers may keep them:

* :class:`RecordingCache` (prompt pass) keeps the first keys/values each layer gives it and returns
  its inputs unchanged, so a replay stores nothing and computes what the first run computed;
* :class:`PrefixCache` (completion pass) holds fixed per-sequence prompt keys/values and returns
  ``cat(prompt, new)`` without storing anything, so a replay reads the same states.

:func:`cache_through_checkpointing` lets the checkpointed layers of a model keep their cache argument
while these caches are in use (transformers' ``_can_checkpoint_with_cache`` layer flag, meant for
layers whose cache reads are replay-safe). Gradients reach the prompt positions through the recorded
keys/values, as with the full forward.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["PrefixCache", "RecordingCache", "cache_through_checkpointing"]

_FLAG = "_can_checkpoint_with_cache"
_ABSENT = object()


class _RecordingLayer(DynamicLayer):
    """Keeps the first keys/values it is given; returns its inputs unchanged."""

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.device = key_states.device
            self.keys, self.values = key_states, value_states
            self.is_initialized = True
        return key_states, value_states


class _PrefixLayer(DynamicLayer):
    """Fixed prompt keys/values; ``update`` returns them followed by the new states and stores nothing."""

    def __init__(self, keys: Tensor, values: Tensor):
        super().__init__()
        self.device = keys.device
        self.keys, self.values = keys, values
        self.is_initialized = True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class RecordingCache(Cache):
    """The prompt pass's cache: one recording layer per decoder layer, created as the layers run."""

    def __init__(self) -> None:
        super().__init__(layer_class_to_replicate=_RecordingLayer)

    def gather(self, rows: Tensor) -> PrefixCache:
        """The recorded keys/values of prompt ``rows[i]`` for sequence ``i``, as a :class:`PrefixCache`."""
        if not self.layers or any(not layer.is_initialized for layer in self.layers):
            raise RuntimeError("the prompt pass recorded no keys/values in some decoder layer: this transformers "
                               "version drops the cache of checkpointed layers despite their replay-safe-cache flag")
        return PrefixCache([(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
                            for layer in self.layers])


class PrefixCache(Cache):
    """The completion pass's cache: per-sequence prompt keys/values, read-only."""

    def __init__(self, states: list[tuple[Tensor, Tensor]]):
        super().__init__(layers=[_PrefixLayer(k, v) for k, v in states])


@contextmanager
def cache_through_checkpointing(model: nn.Module) -> Iterator[None]:
    """Within the block, checkpointed layers of ``model`` keep their cache argument (restored on exit)."""
    changed: list[tuple[nn.Module, object]] = []
    for module in model.modules():
        if hasattr(module, _FLAG) and not getattr(module, _FLAG):
            changed.append((module, module.__dict__.get(_FLAG, _ABSENT)))
            setattr(module, _FLAG, True)
    try:
        yield
    finally:
        for module, before in changed:
            if before is _ABSENT:
                delattr(module, _FLAG)
            else:
                setattr(module, _FLAG, before)
