"""RL algorithm configuration (stage 3 RLVR, and the actor update of stage 2) and the paper presets.

An algorithm is a named bundle of settings consumed by the RL trainer: advantage estimator, policy
loss, clip ranges, aggregation, KL, entropy, DAPO shaping/filtering and optimiser settings. The
presets reproduce the PRISM RLVR scripts (docs/prism_method.md §7.2); every number is documented
where it comes from. ``resolve_algorithm(name, overrides)`` applies grid overrides on top of a preset.

Important (docs/rl_objectives.md §4): all PPO-style clips are no-ops when training is fully on-policy
(one PPO epoch and the whole rollout batch as a single mini-batch: ratio == 1 for every token). The PRISM
RLVR scripts use train batch 32 prompts = mini-batch 32 prompts, i.e. ``mini_batches_per_rollout=1``
for GRPO, DAPO and GSPO alike, so in the paper's setting the clip ranges never bite and GSPO
differs from GRPO only by its aggregation. The GSPO paper itself uses 4 mini-batches per rollout;
the extra preset ``gspo_paper`` does that. This module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prism_lab.config.base import KeyStable, registered_name
from prism_lab.errors import ConfigError
from prism_lab.registry import Registry

__all__ = [
    "ALGORITHM_PRESETS",
    "ActorConfig",
    "AdvEstimatorName",
    "AggModeName",
    "AlgorithmConfig",
    "AlgorithmPreset",
    "FilterGroupsConfig",
    "KLTypeName",
    "OverlongBufferConfig",
    "PolicyLossName",
    "resolve_algorithm",
]

# Each name type accepts what its registry in prism_lab/algos registers (read from the source, no torch).
AdvEstimatorName = registered_name("prism_lab.algos.advantages", "ADV_ESTIMATORS", "advantage estimator")
PolicyLossName = registered_name("prism_lab.algos.policy_loss", "POLICY_LOSSES", "policy loss")
AggModeName = registered_name("prism_lab.algos.aggregation", "AGGREGATIONS", "loss aggregation")
KLTypeName = registered_name("prism_lab.algos.kl", "KL_ESTIMATORS", "KL estimator")


class OverlongBufferConfig(BaseModel):
    """DAPO soft overlong punishment: ``r += min(-(L - (L_max - L_buf)) / L_buf * factor, 0)``."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, description="Add the overlong penalty to the reward (DAPO reward manager).")
    len: int = Field(
        4096,
        gt=0,
        description="Buffer length L_buf in tokens (paper DAPO script: 4096 with max response 8192). "
        "Ignored when len_ratio is set.",
    )
    len_ratio: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Buffer length as a fraction of the max response length (paper: 4096/8192 = 0.5); "
        "when set it overrides `len`, so small toy response lengths keep the paper's proportions.",
    )
    penalty_factor: float = Field(1.0, ge=0.0, description="Penalty at L = L_max (paper: 1.0).")

    def resolve_len(self, max_response_length: int) -> int:
        """Buffer length in tokens for a run whose responses are capped at ``max_response_length``."""
        if self.len_ratio is not None:
            return max(1, round(self.len_ratio * max_response_length))
        if self.len > max_response_length:
            raise ConfigError(
                f"algorithm.overlong_buffer.len={self.len} exceeds max_response_length={max_response_length}; "
                "set algorithm.overlong_buffer.len_ratio (paper: 0.5) or a smaller len"
            )
        return self.len


class FilterGroupsConfig(BaseModel):
    """DAPO dynamic sampling: drop groups whose metric has zero population std; refill from new batches."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    enabled: bool = Field(False, description="Filter zero-variance groups and resample (DAPO dynamic sampling).")
    metric: Literal["acc", "score"] = Field(
        "acc",
        description="Per-sample value whose group std decides: 'acc' = rule accuracy (paper: acc_reward), "
        "'score' = the full shaped reward.",
    )
    max_num_gen_batches: int = Field(
        10,
        description="Generation batches per step before giving up with an error (paper: 10); <= 0 = unlimited.",
    )
    gen_batch_multiplier: float = Field(
        3.0,
        ge=1.0,
        description="Prompts per generation batch as a multiple of the train batch (paper: 96 / 32 = 3).",
    )


class ActorConfig(KeyStable):
    """The actor update shared by RL (stage 3) and alignment (stage 2): optimizer, policy loss, clip ratios,
    aggregation, KL and entropy terms, gradient clip, PPO epochs and the micro-batch token budgets.

    The trainers pass it whole to the shared update (trainers/actor.py) and on to the registered policy loss
    (prism_lab.algos.policy_loss reads its fields by these names), as verl passes its actor config: a new loss
    with a new hyperparameter is one field here and one registered function. :class:`AlgorithmConfig` is an
    ActorConfig with the RL-only settings; ``AlignConfig.actor()`` builds one from alignment's fields.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    added_fields = ("max_tokens_per_micro_batch", "log_prob_max_tokens_per_micro_batch")

    policy_loss: PolicyLossName = Field(
        "vanilla", description="Policy loss (prism_lab.algos.policy_loss.POLICY_LOSSES)."
    )
    clip_ratio_low: float = Field(0.2, ge=0.0, lt=1.0, description="eps_low: ratio clipped below at 1 - eps_low.")
    clip_ratio_high: float = Field(0.2, ge=0.0, description="eps_high: ratio clipped above at 1 + eps_high.")
    clip_ratio_c: float = Field(
        3.0, gt=1.0, description="Dual-clip constant c (> 1) for A < 0 in the vanilla loss; unused by GSPO."
    )
    loss_agg_mode: AggModeName = Field(
        "token-mean", description="Aggregation of the token loss matrix (prism_lab.algos.aggregation)."
    )
    loss_scale_factor: float | None = Field(
        None,
        gt=0.0,
        description="Constant divisor for seq-mean-token-sum-norm; None = padded response length of the batch.",
    )
    kl_loss_type: KLTypeName = Field(
        "low_var_kl", description="KL-to-reference estimator (prism_lab.algos.kl), used when kl_loss_coef > 0."
    )
    kl_loss_coef: float = Field(
        0.0, ge=0.0, description="Weight of the KL loss; 0 = off and no reference model is needed (paper: off)."
    )
    entropy_coeff: float = Field(0.0, ge=0.0, description="Entropy bonus weight (loss -= coeff * entropy); paper 0.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each rollout batch (paper: 1).")
    lr: float = Field(1e-6, gt=0.0, description="AdamW learning rate (paper: 1e-6).")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (GRPO 0.01, DAPO/GSPO 0.1).")
    grad_clip: float = Field(1.0, gt=0.0, description="Max global gradient norm (paper: 1.0).")
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        description="Token budget of one actor-update micro-batch per process (verl's ppo_max_token_len_per_gpu; "
        "paper: 10,240 for GRPO/DAPO, 20,480 for GSPO): rows are grouped in order while their prompt + response "
        "tokens fit; a longer row gets a micro-batch of its own. The loss does not depend on the grouping. "
        "None = micro-batches of a fixed number of rows (the stage's micro-batch size).",
    )
    log_prob_max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        description="Token budget of one micro-batch of the no-grad log-prob recompute (old and reference "
        "log-probs; verl's log_prob_max_token_len_per_gpu, paper GSPO: 30,720). None = "
        "max_tokens_per_micro_batch.",
    )

    @property
    def log_prob_token_budget(self) -> int | None:
        """The log-prob recompute's token budget: its own, else the update's (None = row micro-batches)."""
        if self.log_prob_max_tokens_per_micro_batch is not None:
            return self.log_prob_max_tokens_per_micro_batch
        return self.max_tokens_per_micro_batch

    @model_validator(mode="after")
    def _gspo_aggregation(self) -> ActorConfig:
        if self.policy_loss == "gspo" and self.loss_agg_mode != "seq-mean-token-mean":
            raise ValueError(
                "policy_loss 'gspo' always aggregates with 'seq-mean-token-mean' (verl); set loss_agg_mode "
                "accordingly, or use policy_loss 'gspo_token' for another aggregation"
            )
        return self


class AlgorithmConfig(ActorConfig):
    """Everything the RL trainer needs to know about the algorithm (not the model, data or rollout): the actor
    update (:class:`ActorConfig`) and the advantage, reward shaping, sampling and schedule settings of RL."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    adv_estimator: AdvEstimatorName = Field(
        "grpo", description="Advantage estimator (prism_lab.algos.advantages.ADV_ESTIMATORS)."
    )
    norm_adv_by_std: bool = Field(
        True, description="Divide centred group rewards by (unbiased std + eps); False = Dr.GRPO."
    )
    adv_eps: float = Field(1e-6, gt=0.0, description="eps in (R - mean) / (std + eps) (verl: 1e-6).")
    overlong_buffer: OverlongBufferConfig = Field(
        default_factory=OverlongBufferConfig, description="DAPO soft overlong punishment."
    )
    filter_groups: FilterGroupsConfig = Field(
        default_factory=FilterGroupsConfig, description="DAPO dynamic sampling (zero-variance group filter)."
    )
    mini_batches_per_rollout: int = Field(
        1,
        ge=1,
        description="Optimiser steps per rollout batch per epoch. With 1 (and ppo_epochs 1) training is "
        "fully on-policy and every clip is a no-op (PRISM scripts: 1; GSPO paper: 4).",
    )
    warmup_steps_ratio: float = Field(
        0.0, ge=0.0, le=1.0, description="Linear warmup as a fraction of total steps (GSPO: 0.05)."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warmup in steps; when set it wins over warmup_steps_ratio (DAPO: 10)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> AlgorithmConfig:
        if self.adv_estimator == "dr_grpo" and self.norm_adv_by_std:
            raise ValueError("adv_estimator 'dr_grpo' never divides by the std: set norm_adv_by_std=false")
        if self.warmup_steps is not None and self.warmup_steps > 0 and self.warmup_steps_ratio > 0:
            raise ValueError("set either warmup_steps or warmup_steps_ratio, not both")
        return self

    @property
    def uses_reference(self) -> bool:
        """True when a frozen reference policy is needed (KL loss on)."""
        return self.kl_loss_coef > 0

    @property
    def is_on_policy(self) -> bool:
        """True when ratio == 1 throughout the update, so every clip is a no-op (docs/rl_objectives.md §4)."""
        return self.ppo_epochs == 1 and self.mini_batches_per_rollout == 1

    def num_warmup_steps(self, total_steps: int) -> int:
        """Warmup length for a run of ``total_steps`` optimiser steps."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_steps_ratio * total_steps)


@dataclass(frozen=True)
class AlgorithmPreset:
    """A named algorithm with a description of where its numbers come from."""

    name: str
    description: str
    config: AlgorithmConfig


ALGORITHM_PRESETS: Registry[AlgorithmPreset] = Registry("algorithm preset")


def _preset(name: str, description: str, **fields: Any) -> None:
    ALGORITHM_PRESETS.add(name, AlgorithmPreset(name, description, AlgorithmConfig(**fields)))


_COMMON = "KL off, lr 1e-6, grad clip 1.0, ppo_epochs 1, entropy 0, one mini-batch per rollout (train batch 32 = mini-batch 32)"

_preset(
    "grpo",
    "PRISM RLVR GRPO script (docs/prism_method.md §7.2; verl main_ppo defaults): vanilla PPO-clip 0.2/0.2, dual clip "
    f"c 3.0, token-mean, GRPO advantage (unbiased std, eps 1e-6), wd 0.01, no warmup; {_COMMON}.",
    adv_estimator="grpo",
    norm_adv_by_std=True,
    policy_loss="vanilla",
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    clip_ratio_c=3.0,
    loss_agg_mode="token-mean",
    kl_loss_coef=0.0,
    weight_decay=0.01,
    warmup_steps=None,
    warmup_steps_ratio=0.0,
    mini_batches_per_rollout=1,
)
_preset(
    "dapo",
    "PRISM RLVR DAPO script (docs/prism_method.md §7.2; verl-recipe dapo): clip-higher 0.2/0.28, dual clip c 10.0, "
    "token-mean, overlong buffer 4096 tokens (of max response 8192) with factor 1.0, dynamic sampling on "
    "acc with max 10 generation batches of 96 prompts (3x the train batch), wd 0.1, 10 warmup steps; "
    f"{_COMMON}. For toy response lengths set overlong_buffer.len_ratio=0.5.",
    adv_estimator="grpo",
    norm_adv_by_std=True,
    policy_loss="vanilla",
    clip_ratio_low=0.2,
    clip_ratio_high=0.28,
    clip_ratio_c=10.0,
    loss_agg_mode="token-mean",
    overlong_buffer=OverlongBufferConfig(enabled=True, len=4096, penalty_factor=1.0),
    filter_groups=FilterGroupsConfig(enabled=True, metric="acc", max_num_gen_batches=10, gen_batch_multiplier=3.0),
    kl_loss_coef=0.0,
    weight_decay=0.1,
    warmup_steps=10,
    warmup_steps_ratio=0.0,
    mini_batches_per_rollout=1,
)
_GSPO_FIELDS: dict[str, Any] = dict(
    adv_estimator="grpo",
    norm_adv_by_std=True,
    clip_ratio_low=3e-4,
    clip_ratio_high=4e-4,
    loss_agg_mode="seq-mean-token-mean",
    kl_loss_coef=0.0,
    weight_decay=0.1,
    warmup_steps=None,
    warmup_steps_ratio=0.05,
)
_preset(
    "gspo",
    "PRISM RLVR GSPO script (docs/prism_method.md §7.2; verl policy_loss.loss_mode=gspo): sequence ratio built "
    "GSPO-token style, clip 3e-4/4e-4, no dual clip, seq-mean-token-mean, overlong off, wd 0.1, warmup 5% "
    f"of steps; {_COMMON}: in this on-policy setting the clip never bites (see gspo_paper).",
    policy_loss="gspo",
    mini_batches_per_rollout=1,
    **_GSPO_FIELDS,
)
_preset(
    "gspo_token",
    "GSPO-token (GSPO paper, arXiv 2507.18071): same settings as 'gspo' but the loss accepts token-level "
    "advantages and honours loss_agg_mode; equal to GSPO for per-sequence advantages.",
    policy_loss="gspo_token",
    mini_batches_per_rollout=1,
    **_GSPO_FIELDS,
)
_preset(
    "gspo_paper",
    "'gspo' with 4 mini-batches per rollout batch, as in the GSPO paper and verl's GSPO example (docs/rl_objectives.md "
    "§4), so the sequence-level clip is active from the second mini-batch on. Not a PRISM script setting.",
    policy_loss="gspo",
    mini_batches_per_rollout=4,
    **_GSPO_FIELDS,
)
_preset(
    "dr_grpo",
    "Dr.GRPO (verl norm_adv_by_std_in_grpo=False + seq-mean-token-sum-norm): centred group rewards without "
    "std division, token sums divided by a constant (loss_scale_factor; None = padded length, set it to "
    "the max response length). Other settings as the 'grpo' preset. Not used by the PRISM paper.",
    adv_estimator="dr_grpo",
    norm_adv_by_std=False,
    policy_loss="vanilla",
    clip_ratio_low=0.2,
    clip_ratio_high=0.2,
    clip_ratio_c=3.0,
    loss_agg_mode="seq-mean-token-sum-norm",
    kl_loss_coef=0.0,
    weight_decay=0.01,
    mini_batches_per_rollout=1,
)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigError(f"algorithm override keys must be strings, got {key!r}")
        head, _, rest = key.partition(".")
        if rest:
            value = {rest: value}
        if isinstance(value, dict) and isinstance(out.get(head), dict):
            out[head] = _merge(out[head], value)
        else:
            out[head] = value
    return out


def resolve_algorithm(name: str, overrides: dict[str, Any] | None = None) -> AlgorithmConfig:
    """Preset ``name`` with ``overrides`` applied (nested dicts or dotted keys such as ``"overlong_buffer.len"``).

    Unknown preset names, unknown fields and invalid values raise :class:`ConfigError` naming the field.
    """
    if name not in ALGORITHM_PRESETS:
        known = ", ".join(ALGORITHM_PRESETS.names())
        raise ConfigError(f"unknown algorithm {name!r}; known: {known}")
    base = ALGORITHM_PRESETS.get(name).config.model_dump()
    merged = _merge(base, dict(overrides or {}))
    try:
        return AlgorithmConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"algorithm.{'.'.join(str(p) for p in err['loc']) or '(model)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings for algorithm {name!r}: {problems}") from None
