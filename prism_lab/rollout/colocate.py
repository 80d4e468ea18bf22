"""A rollout engine sharing each rank's GPU with the trainer: the memory choreography of one step, in one place.

The RL and alignment stages roll out with one engine per rank (vLLM's external launcher; TRL's
``vllm_mode="colocate"`` and verl's hybrid engine work the same way). Its GPU memory and the trainer's
take turns, in this order every step (:data:`PHASES`)::

    wake weights -> sync -> wake KV cache -> generate -> sleep -> train

* ``wake_up(["weights"])``: the engine's weight memory comes back (from host memory at sleep level 1);
* sync: the policy's current weights, whole, into the engine (:func:`prism_lab.rollout.weight_sync.push_weights`,
  a collective under FSDP2), only when the policy changed since the last sync (the trainer calls
  :meth:`ColocatedEngine.policy_updated` after each update) or the engine dropped its weights (level 2);
  the first rollout always syncs, so a resumed run rolls out with the resumed weights;
* ``wake_up(["kv_cache"])``: the KV cache is allocated again only now, after the sync's buckets are freed;
* generate: the engine samples this rank's share of the prompts (no collective);
* ``sleep(level)``: weights and KV cache leave the GPU, and the trainer's update has it.

The engine is asleep from its construction until the first rollout. ``engine`` implements the small
interface of :class:`ColocatableEngine`; :class:`prism_lab.rollout.vllm.VLLMEngine` is the real one on a GPU,
:class:`prism_lab.rollout.hf_colocated.HFColocatedEngine` a transformers copy that runs anywhere
(``rollout_engine: hf_colocated``, the CPU grids' engine), and the CPU tests also use a recording test double
(which proves the choreography and the weights handed over, nothing about vLLM itself).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from prism_lab.config.rollout import RolloutConfig
from prism_lab.errors import PrismError
from prism_lab.rollout.types import Prompt, Rollout, RolloutEngine
from prism_lab.rollout.weight_sync import DEFAULT_BUCKET_BYTES, push_weights

__all__ = ["PHASES", "ColocatableEngine", "ColocatedEngine", "make_training_engine"]

#: The phases of one colocated step, in order (the memory planner sizes the same phases).
PHASES = ("wake_weights", "sync", "wake_kv_cache", "generate", "sleep", "train")


class ColocatableEngine(RolloutEngine, Protocol):
    """What the choreography calls: vLLM's ``LLM.sleep`` / ``wake_up`` and its model's ``load_weights``."""

    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> Any: ...

    def sleep(self, level: int = 1) -> Any: ...

    def wake_up(self, tags: list[str] | None = None) -> Any: ...


class ColocatedEngine:
    """A :class:`ColocatableEngine` driven through the phases above, fed from ``policy`` (which may be FSDP2-sharded).

    ``device``: where the weights are gathered (this rank's GPU); ``dtype``: what the engine holds (bf16);
    ``sleep_level``: 1 keeps the engine's weights in host memory while it sleeps, 2 drops them (less host
    memory; every rollout then syncs)."""

    #: Sampling runs on this rank alone: no rank waits for another's decoding (unlike the sharded HF engine).
    generates_locally = True

    def __init__(self, engine: ColocatableEngine, policy: torch.nn.Module, *, device: torch.device,
                 dtype: torch.dtype | None = torch.bfloat16, sleep_level: int = 1,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {sleep_level}")
        self.engine = engine
        self.policy = policy
        self.device = torch.device(device)
        self.dtype = dtype
        self.sleep_level = sleep_level
        self.bucket_bytes = bucket_bytes
        self.kind = getattr(engine, "kind", "custom")
        self.suppress_token_ids = getattr(engine, "suppress_token_ids", None)
        self.syncs = 0  # weight syncs so far
        self._stale = True  # the engine was built from the input checkpoint; a resumed policy differs from it
        engine.sleep(level=sleep_level)  # the trainer has the GPU until the first rollout

    def policy_updated(self) -> None:
        """The policy's weights changed (an optimizer step): the next rollout syncs first."""
        self._stale = True

    def generate(self, prompts: list[Prompt], **kwargs: Any) -> list[Rollout]:
        """One rollout through the phases: wake weights, sync if needed, wake KV cache, generate, sleep.
        Every rank calls it the same number of times (the sync is a collective), with its own prompts."""
        self.engine.wake_up(tags=["weights"])
        if self._stale or self.sleep_level == 2:
            push_weights(self.policy, self.engine, device=self.device, dtype=self.dtype, bucket_bytes=self.bucket_bytes)
            self._stale = False
            self.syncs += 1
        self.engine.wake_up(tags=["kv_cache"])
        try:
            return self.engine.generate(prompts, **kwargs)
        finally:
            self.engine.sleep(level=self.sleep_level)

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def make_training_engine(policy: torch.nn.Module, processor: Any, settings: RolloutConfig, *,
                         checkpoint_dir: str | Path | None, rank: int, device: torch.device) -> RolloutEngine:
    """The rollout engine of a training stage: the HF engine on ``policy``, or (``settings.engine`` resolving to
    ``vllm`` or ``hf_colocated``) rank ``rank``'s colocated engine, built once per run from the stage's input
    checkpoint ``checkpoint_dir`` and fed the policy's weights through the phases above: vLLM's on a GPU, or a
    transformers copy (:class:`prism_lab.rollout.hf_colocated.HFColocatedEngine`) on any device."""
    from prism_lab.rollout import HFGenerateEngine, resolve_engine_kind

    kind = resolve_engine_kind(settings.engine)
    if kind == "hf":
        return HFGenerateEngine(policy, processor)
    if checkpoint_dir is None:
        raise PrismError(f"rollout_engine {kind!r} builds its engine from the stage's input checkpoint directory; "
                         "none was given (use rollout_engine: hf)")
    if kind == "hf_colocated":
        from prism_lab.rollout.hf_colocated import HFColocatedEngine

        dtype = next(policy.parameters()).dtype  # the copy samples in the dtype the policy trains in
        copy = HFColocatedEngine.from_checkpoint(checkpoint_dir, processor, device=device, dtype=dtype)
        return ColocatedEngine(copy, policy, device=device, dtype=copy.dtype)
    if not torch.cuda.is_available():
        raise PrismError("rollout_engine 'vllm' needs a CUDA GPU; none is visible. Use rollout_engine: hf_colocated "
                         "(the same colocated path with a transformers copy) or hf")
    from prism_lab.rollout.vllm import VLLMEngine

    engine = VLLMEngine.colocated(checkpoint_dir, processor, settings, rank=rank, model=policy)
    return ColocatedEngine(engine, policy, device=device)
