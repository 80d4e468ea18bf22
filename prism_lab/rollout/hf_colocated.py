"""The colocated engine's interface with a real generator that runs anywhere: a transformers copy of the policy.

``rollout_engine: hf_colocated`` rolls the RL and alignment stages out exactly the way ``vllm`` does
(:mod:`prism_lab.rollout.colocate`: wake weights -> sync -> wake KV cache -> generate -> sleep -> train), with
:class:`HFColocatedEngine` where :class:`prism_lab.rollout.vllm.VLLMEngine` would be. So on a CPU (no vLLM,
no GPU) the stages still go through every step of the colocated path: one unsharded model per rank built once
per run from the stage's INPUT checkpoint, the policy's weights pushed into it whole by
:func:`prism_lab.rollout.weight_sync.push_weights` (a collective under FSDP2), and sampling on this rank alone
(no rank waits for another's decoding, unlike the sharded HF engine). What it does not show is anything about
vLLM itself: vLLM's loading, sleep mode and sampling are only exercised on a GPU (``benchmarks/gpu/``).

Names: the sync sends checkpoint names (the ones ``save_pretrained`` writes, which vLLM's Qwen3-VL maps to
its own modules). A transformers Qwen3-VL model's parameters carry those very names, so no mapping back is
needed; a name the model does not have is refused. Tied embeddings: the sync sends the shared tensor once,
under ``model.language_model.embed_tokens.weight``; the copy's output head is that same parameter, so it
follows (an ``lm_head.weight`` sent for a tied copy is skipped, as vLLM skips it).

Sleep and wake-up keep the phases honest: loading while the weights sleep, or generating before both the
weights and the KV cache are awake, is an error. On a GPU, sleep moves the copy to host memory and
``wake_up(["weights"])`` brings it back (the KV cache only exists inside ``generate``). ``sleep(level=2)``
stands for vLLM dropping its weights: the next generation needs every parameter loaded again first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from prism_lab.rollout.hf import HFGenerateEngine
from prism_lab.rollout.types import Prompt, Rollout

__all__ = ["HFColocatedEngine"]

_TAGS = ("weights", "kv_cache")


class HFColocatedEngine:
    """One rank's unsharded transformers copy of the policy behind the colocated interface (``load_weights``,
    ``generate``, ``sleep``, ``wake_up``). Built awake; :class:`~prism_lab.rollout.colocate.ColocatedEngine` puts
    it to sleep until the first rollout."""

    kind = "hf_colocated"

    def __init__(self, model: torch.nn.Module, processor: Any, *, device: torch.device | str = "cpu") -> None:
        if any(hasattr(p, "full_tensor") for p in model.parameters()):
            raise ValueError("the colocated HF engine holds a whole, unsharded copy of the model; got a sharded one")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.processor = processor
        self.dtype = next(self.model.parameters()).dtype
        self._params = dict(self.model.named_parameters())
        self._tied_head = "lm_head.weight" not in self._params
        self._inner = HFGenerateEngine(self.model, processor)
        self.suppress_token_ids = self._inner.suppress_token_ids
        self.awake: set[str] = set(_TAGS)
        self._missing: set[str] = set()  # parameters still to load after a level-2 sleep dropped them
        self.loads = 0  # load_weights calls so far

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str | Path, processor: Any, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None) -> HFColocatedEngine:
        """The engine of one rank, built from the stage's input checkpoint directory (read once per run)."""
        from prism_lab.models import load_policy

        model, _ = load_policy(checkpoint_dir, dtype=dtype, device="cpu")
        return cls(model, processor, device=device)

    # ---- the colocated interface ----------------------------------------------------------------------
    def load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        """Copy ``(checkpoint name, whole tensor)`` pairs into the copy's parameters."""
        if "weights" not in self.awake:
            raise RuntimeError("load_weights while the engine's weights sleep: wake_up(['weights']) comes first")
        with torch.no_grad():
            for name, tensor in weights:
                param = self._params.get(name)
                if param is None:
                    if name == "lm_head.weight" and self._tied_head:
                        continue  # the head is the embedding, loaded under its own name
                    raise ValueError(f"the colocated HF engine has no parameter {name!r} (the sync sends "
                                     "checkpoint names)")
                if tuple(tensor.shape) != tuple(param.shape):
                    raise ValueError(f"{name}: got shape {tuple(tensor.shape)}, the model's is {tuple(param.shape)} "
                                     "(the sync must send whole tensors, not shards)")
                param.copy_(tensor.to(device=param.device, dtype=param.dtype))
                self._missing.discard(name)
        self.loads += 1

    def sleep(self, level: int = 1) -> None:
        """Give the memory back: on a GPU the copy goes to host memory; ``level`` 2 also drops its weights (the
        next generation needs a full sync first)."""
        if level not in (1, 2):
            raise ValueError(f"sleep level must be 1 or 2, got {level}")
        self.awake.clear()
        if self.device.type != "cpu":
            self.model.to("cpu")
        if level == 2:
            self._missing = set(self._params)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take back the memory of ``tags`` (``weights``, ``kv_cache``; None: both)."""
        tags = list(tags) if tags is not None else list(_TAGS)
        unknown = [t for t in tags if t not in _TAGS]
        if unknown:
            raise ValueError(f"unknown wake_up tags {unknown}; expected a subset of {list(_TAGS)}")
        if "weights" in tags and "weights" not in self.awake and self.device.type != "cpu":
            self.model.to(self.device)
        self.awake.update(tags)

    def generate(self, prompts: list[Prompt], **kwargs: Any) -> list[Rollout]:
        """Sample with transformers on this rank's copy (no collective); the HF engine's contract."""
        asleep = [t for t in _TAGS if t not in self.awake]
        if asleep:
            raise RuntimeError(f"generate while {', '.join(asleep)} sleep: wake_up({asleep}) comes first")
        if self._missing:
            raise RuntimeError(f"generate after a level-2 sleep with {len(self._missing)} parameters not loaded "
                               f"again (e.g. {sorted(self._missing)[0]})")
        return self._inner.generate(prompts, **kwargs)
