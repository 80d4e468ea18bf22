"""Stage 3, RLVR. Shared settings from docs/prism_method.md §7.2; per-algorithm settings are presets."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from prism_lab.config.base import KeyStable, Seed, StrictModel
from prism_lab.config.resources import ResourcesConfig, check_covers_processes, resources_field
from prism_lab.config.rollout import RolloutConfig


class RLConfig(StrictModel, KeyStable):
    """One RL loop for GRPO, DAPO and GSPO; `algorithm` picks the preset, `algorithm_overrides` edit it."""

    added_fields = ("rollout_gpu_memory_utilization",)

    algorithm: str = Field("grpo", description="Algorithm preset: grpo, dapo, gspo, gspo_token, dr_grpo.")
    algorithm_overrides: dict[str, Any] = Field(
        default_factory=dict, description="Fields of the algorithm preset to override (e.g. clip_ratio_high)."
    )
    steps: int = Field(1500, ge=1, description="Training steps (paper scripts: 1500).")
    prompts_per_step: int = Field(32, ge=1, description="Prompts per rollout batch (paper: 32).")
    n: int = Field(16, ge=1, description="Responses sampled per prompt (group size; paper: 16).")
    temperature: float = Field(1.0, gt=0, description="Rollout temperature (paper: 1.0).")
    top_p: float = Field(1.0, gt=0, le=1, description="Rollout top-p (paper: 1.0).")
    max_prompt_length: int = Field(2048, ge=8, description="Prompts longer than this are filtered.")
    max_new_tokens: int = Field(8192, ge=1, description="Max response length (paper: 8192).")
    acc_weight: float = Field(0.8, ge=0, description="Reward = acc_weight*acc + format_weight*format.")
    format_weight: float = Field(0.2, ge=0, description="Weight of the format term of the reward.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per forward/backward micro-batch.")
    rollout_engine: Literal["auto", "hf", "vllm", "hf_colocated"] = Field(
        "auto", description="`auto`: vLLM when installed with a GPU, else HF generate. vLLM runs colocated: one "
        "engine per process, asleep while the policy trains (prism_lab/rollout/colocate.py); `hf_colocated` is the "
        "same colocated path with a transformers copy per process (runs on a CPU)."
    )
    rollout_gpu_memory_utilization: float = Field(
        0.6, gt=0, lt=1, description="Share of each GPU the colocated vLLM engine reserves while it rolls out."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="Training precision.")
    save_every: int = Field(120, ge=1, description="Resumable checkpoint every N steps (paper: 120).")
    log_every: int = Field(1, ge=1, description="Log metrics every N steps.")
    max_minutes: float | None = Field(None, gt=0, description="Wall-clock budget for the stage; a run it stops is marked truncated "
                                        "(its result depends on the machine). Budgets to compare are steps.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None = torch default).")
    seed: Seed = Field(0, description="Seed for sampling, data order and dropout.")
    resources: ResourcesConfig = resources_field(
        "`prompts_per_step` stays global: each process rolls out its share of the prompts.")

    def rollout(self) -> RolloutConfig:
        """What the RL trainer rolls out with (shared with alignment); a generate batch holds every rollout
        of a call (the whole generation batch of prompts x ``n``)."""
        return RolloutConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                             max_prompt_length=self.max_prompt_length, max_new_tokens=self.max_new_tokens,
                             engine=self.rollout_engine, batch_size=None, seed=self.seed,
                             gpu_memory_utilization=self.rollout_gpu_memory_utilization)

    @model_validator(mode="after")
    def _prompts_cover_processes(self) -> RLConfig:
        check_covers_processes(self.prompts_per_step, "prompts_per_step", self.resources)
        return self

    @model_validator(mode="after")
    def _overlong_buffer_fits_the_responses(self) -> RLConfig:
        """DAPO's overlong buffer must fit in ``max_new_tokens``: checked when the grid is read, not when the
        RL stage starts."""
        from prism_lab.config.algorithms import ALGORITHM_PRESETS, resolve_algorithm
        from prism_lab.errors import ConfigError

        if self.algorithm in ALGORITHM_PRESETS:
            buffer = resolve_algorithm(self.algorithm, self.algorithm_overrides).overlong_buffer
            if buffer.enabled:
                try:
                    buffer.resolve_len(self.max_new_tokens)
                except ConfigError as exc:
                    raise ValueError(str(exc).replace("max_response_length", "max_new_tokens")) from None
        return self

    @field_validator("algorithm_overrides")
    @classmethod
    def _check_overrides(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The preset with the overrides applied must be valid now, not when the RL stage starts."""
        from prism_lab.config.algorithms import ALGORITHM_PRESETS, resolve_algorithm
        from prism_lab.errors import ConfigError

        name = info.data.get("algorithm")
        if name in ALGORITHM_PRESETS:
            try:
                resolve_algorithm(name, value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value
