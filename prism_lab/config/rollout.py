"""What a stage rolls out with: the sampling settings RL (stage 3) and alignment (stage 2) share.

Not a YAML section: the grids keep setting ``rl.n``, ``align.temperature``, ... (so no content key changes);
``RLConfig.rollout()`` and ``AlignConfig.rollout()`` build one from those fields, and the trainers hand it whole
to the rollout code (:func:`prism_lab.rollout.sample.sample_rollouts`) instead of reading loose fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism_lab.config.base import Seed
from prism_lab.seeds import derive_seed

__all__ = ["RolloutConfig"]


class RolloutConfig(BaseModel):
    """The rollout settings of one training stage (built by its config, never read from a grid)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    n: int = Field(ge=1, description="Responses sampled per prompt (one group).")
    temperature: float = Field(gt=0, description="Sampling temperature; the trainer's log-probs use the same.")
    top_p: float = Field(gt=0, le=1, description="Nucleus threshold.")
    max_prompt_length: int = Field(ge=1, description="Prompts longer than this (in tokens) are skipped.")
    max_new_tokens: int = Field(ge=1, description="Max response tokens.")
    engine: Literal["auto", "hf", "vllm", "hf_colocated"] = Field(
        description="Rollout engine (prism_lab.rollout.colocate.make_training_engine).")
    batch_size: int | None = Field(
        None, ge=1, description="Sequences per generate batch; None = every rollout of a call in one batch.")
    seed: Seed = Field(description="Base seed of the rollouts; each call samples with seed_for(stream, ...).")
    gpu_memory_utilization: float = Field(
        0.6, gt=0, lt=1, description="Share of each GPU a colocated vLLM engine reserves (weights + KV cache) "
        "while it is awake (prism_lab.rollout.colocate).")

    def seed_for(self, stream: str, *parts: int) -> int:
        """The sampling seed of one generate call (``stream`` names the stage, ``parts`` the step, batch, rank)."""
        return derive_seed(self.seed, stream, *parts)

    @property
    def max_model_len(self) -> int:
        """The longest sequence a rollout holds: the prompt cap plus the response cap (a vLLM engine's
        ``max_model_len``; longer prompts are filtered before rollout)."""
        return self.max_prompt_length + self.max_new_tokens

    def batch_for(self, n_prompts: int) -> int:
        """Sequences per generate batch for a call with ``n_prompts`` prompts."""
        return self.batch_size if self.batch_size is not None else max(1, n_prompts * self.n)
