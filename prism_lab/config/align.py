"""Configs of the MoE discriminator, its offline warmup and the stage-2 PRISM alignment.

Defaults are the paper's (docs/prism_method.md §4, §5.3, §6.4-§6.7; every § below is a section of that
page). Where its §10 lists a disagreement between the authors' README and scripts, the choice is an
explicit field, and its description says which value reproduces the original.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from prism_lab.config.algorithms import ActorConfig, AggModeName
from prism_lab.config.base import KeyStable, Seed, registered_name
from prism_lab.config.resources import ResourcesConfig, check_covers_processes, resources_field
from prism_lab.config.rollout import RolloutConfig

__all__ = ["AdvantageModeName", "AlignVariantName", "AlignConfig", "DiscWarmupConfig", "DiscriminatorConfig"]

AdvantageModeName = registered_name("prism_lab.algos.multi_reward", "ADVANTAGE_MODES", "advantage mode")
AlignVariantName = registered_name("prism_lab.trainers.align_variants", "ALIGN_VARIANTS", "alignment variant")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DiscriminatorConfig(_Strict):
    """How the discriminator is built from a dense Qwen3-VL (§4)."""

    base: str = Field(
        "from_policy_preset",
        description=(
            "Dense model to upcycle: 'from_policy_preset' (a model of the policy's preset family, e.g. "
            "Qwen3-VL-2B for the paper, a tiny preset on CPU) or a path to a local HF Qwen3-VL directory."
        ),
    )
    kind: Literal["moe", "dense", "text_only"] = Field(
        "moe",
        description=(
            "'moe' = the paper's upcycled MoE with image inputs; 'dense' = ablation without upcycling "
            "(the dense VLM backbone); 'text_only' = ablation: the upcycled MoE with pixel inputs dropped."
        ),
    )
    num_experts: int = Field(4, ge=1, description="Experts per MoE layer (upcycled copies of the dense MLP).")
    top_k: int = Field(2, ge=1, description="Experts per token (num_experts_per_tok); top-k weights renormalised.")
    expert_noise_std: float = Field(0.01, ge=0, description="Std of the N(0, std^2) noise added to each expert copy.")
    router_init_std: float = Field(0.02, ge=0, description="Std of the fresh N(0, std^2) router weights.")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the scalar score head.")
    head_init_std: float = Field(0.02, gt=0, description="Std of the score head Linear(d, 1, bias=False) init.")
    router_aux_loss_coef: float = Field(
        0.01, ge=0, description="MoE load-balancing aux coefficient (written to the MoE config; used in warmup only)."
    )
    experts_implementation: Literal["auto", "eager", "grouped_mm", "batched_mm"] = Field(
        "auto",
        description=(
            "transformers experts kernel. 'auto' keeps the library default (grouped_mm) but never batched_mm "
            "on CPU, which copies expert weights per token (30-80x slower)."
        ),
    )
    seed: Seed = Field(0, description="Seed of the upcycling noise, the router init and the head init.")

    @model_validator(mode="after")
    def _check(self) -> DiscriminatorConfig:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= num_experts ({self.num_experts})")
        return self


class DiscWarmupConfig(_Strict, KeyStable):
    """Offline pairwise warmup of the discriminator (§5)."""

    added_fields = ("precision",)

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    lr_schedule: Literal["cosine", "constant"] = Field("cosine", description="LR schedule after warmup.")
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Fraction of steps with linear LR warmup.")
    epochs: int = Field(1, ge=1, description="Passes over the comparison set.")
    batch_size: int = Field(
        4, ge=1, description="Comparisons per micro-batch (the paper: 4 per GPU, x4 accum x8 GPUs = 128 per step)."
    )
    grad_accum: int = Field(4, ge=1, description="Gradient accumulation steps per optimiser step.")
    grad_clip: float = Field(1.0, gt=0, description="Max global grad norm.")
    aux_coef: float = Field(0.01, ge=0, description="Coefficient of the MoE load-balancing aux loss.")
    seed: Seed = Field(42, description="Shuffle/init seed.")
    heldout_fraction: float = Field(
        0.05, ge=0, lt=1, description="Fraction of comparisons held out to measure pairwise accuracy (not in the paper)."
    )
    max_pairs: int | None = Field(
        None, ge=1, description="Cap on comparison samples used (None = all; the paper used 120k pairs)."
    )
    student_source: Literal["policy", "dataset"] = Field(
        "policy",
        description=(
            "Where student segments come from: 'policy' = generate them with the SFT checkpoint (the README's "
            "'student = SFT-policy output'); 'dataset' = take student_caption/student_cot from the JSONL."
        ),
    )
    max_length: int = Field(8192, ge=16, description="Truncation length of one scored sequence (MAX_LENGTH).")
    max_pixels: int = Field(560 * 560, ge=1, description="Image max_pixels of the warmup processor (§5.2).")
    discriminator: DiscriminatorConfig = Field(
        default_factory=DiscriminatorConfig, description="How the discriminator is built (upcycling, head, ablations)."
    )
    terminator_convention: Literal["original", "uniform"] = Field(
        "uniform",
        description="Token each scored segment ends on (§10.3); must match align.terminator_convention. "
        "'uniform' (default, the recommendation of §10.3) ends every segment with one fixed terminator; "
        "'original' reproduces the paper's mismatch (warmup scores full chat turns).",
    )
    critic_positions: Literal["mrope", "text_1d"] = Field(
        "mrope", description="Position ids fed to the discriminator (§10.4); must match align.critic_positions."
    )
    max_new_tokens: int | None = Field(
        None, ge=1, description="Length cap of the student responses generated from the SFT policy "
        "(None = twice the longest teacher response)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Training precision, resolved as every stage's (trainers/precision.py): `auto` = bf16 "
        "where the device supports it, fp32 on CPU."
    )
    resources: ResourcesConfig = resources_field(
        "`batch_size` and `grad_accum` stay global: each micro-batch of comparisons is split over the processes.")

    @model_validator(mode="after")
    def _batch_covers_processes(self) -> DiscWarmupConfig:
        check_covers_processes(self.batch_size, "batch_size", self.resources)
        return self


class AlignConfig(_Strict, KeyStable):
    """Stage 2: on-policy adversarial distillation against the discriminator (§6)."""

    added_fields = ("actor_micro_batch", "disc_micro_batch", "rollout_batch_size", "rollout_engine", "precision",
                    "actor_max_tokens_per_micro_batch", "log_prob_max_tokens_per_micro_batch",
                    "disc_max_tokens_per_micro_batch", "rollout_gpu_memory_utilization")

    steps: int = Field(
        500,
        ge=1,
        description=(
            "Training steps. 500 = the README's count and the first save of the paper's script; the script's "
            "total_training_steps=1500 with save_freq=500 suggests the released checkpoint is step 500 (§10.1)."
        ),
    )
    prompts_per_step: int = Field(4, ge=1, description="Prompts per step (train_batch_size).")
    n: int = Field(16, ge=1, description="Rollouts per prompt (one GRPO group).")
    temperature: float = Field(1.0, gt=0, description="Rollout sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Rollout nucleus threshold.")
    max_prompt_length: int = Field(2048, ge=1, description="Max prompt tokens (overlong prompts are filtered).")
    max_new_tokens: int = Field(6144, ge=1, description="Max response tokens (max_response_length).")
    actor_lr: float = Field(1e-6, gt=0, description="Actor AdamW lr, constant schedule.")
    critic_lr: float = Field(
        1e-6, gt=0, description="Discriminator AdamW lr (the script's 1e-6; verl's default would be 1e-5, §10.2)."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay of actor and discriminator.")
    grad_clip: float = Field(1.0, gt=0, description="Max grad norm (actor and discriminator); non-finite norm skips the step.")
    clip_ratio_low: float = Field(0.2, ge=0, lt=1, description="PPO clip epsilon below 1.")
    clip_ratio_high: float = Field(0.2, ge=0, description="PPO clip epsilon above 1.")
    dual_clip: float = Field(3.0, gt=1, description="Dual-clip constant c for negative advantages.")
    loss_agg_mode: AggModeName = Field(
        "token-mean", description="Actor loss aggregation (prism_lab.algos.aggregation.AGGREGATIONS)."
    )
    ppo_epochs: int = Field(1, ge=1, description="PPO epochs per batch (mini-batch = whole batch).")
    critic_epochs: int = Field(1, ge=1, description="Discriminator epochs per batch (one mini-batch = all rollouts).")
    advantage_mode: AdvantageModeName = Field(
        "align",
        description="grpo_multi_reward mode (prism_lab.algos.multi_reward.ADVANTAGE_MODES); the paper's "
        "script uses 'align' (M1).",
    )
    caption_weight: float = Field(0.5, description="Weight of the normalised caption channel (README's alpha).")
    cot_weight: float = Field(0.5, description="Weight of the normalised cot channel.")
    format_penalty: float = Field(1.5, ge=0, description="Advantage penalty for a format-invalid response.")
    align_coef: float = Field(1.0, description="Coefficient of A_align in modes M2-M6.")
    wrong_penalty: float = Field(1.0, ge=0, description="Penalty for a wrong answer in modes M2-M6.")
    w_acc: float = Field(1.0, description="Weight of the rule accuracy in modes M4-M6.")
    w_fmt: float = Field(1.0, description="Weight of the rule format score in modes M4-M6.")
    adv_eps: float = Field(1e-6, gt=0, description="Epsilon of the group normalisation.")
    score_clip: float = Field(10.0, gt=0, description="Discriminator scores clamped to [-clip, clip].")
    score_reg_coef: float = Field(0.001, ge=0, description="L2 score regulariser coefficient (all samples).")
    fallback_coef: float = Field(0.01, ge=0, description="Coefficient of the no-valid-sample fallback loss.")
    length_correction_beta: float = Field(
        0.0, ge=0, description="beta of the score length correction x - beta*log(1+len); 0 = off (the paper's run)."
    )
    variant: AlignVariantName = Field(
        "prism", description="Alignment variant (prism_lab.trainers.align_variants.ALIGN_VARIANTS): 'prism' = "
        "caption/cot discriminator (the paper); 'gad' = whole-response GAD."
    )
    terminator_convention: Literal["original", "uniform"] = Field(
        "uniform",
        description=(
            "Which token each scored segment ends on (§10.3). 'original' reproduces the paper (warmup scores "
            "after '<|im_end|>\\n', online student caption ends at '</caption>', cot at '<|im_end|>', teacher "
            "segments at the first pad); 'uniform' appends one fixed terminator to every segment everywhere."
        ),
    )
    critic_positions: Literal["mrope", "text_1d"] = Field(
        "mrope",
        description=(
            "Position ids fed to the discriminator (§10.4). 'text_1d' reproduces the original (1-D text "
            "positions for all tokens, image tokens included); 'mrope' = proper Qwen3-VL M-RoPE ids."
        ),
    )
    save_every: int = Field(500, ge=0, description="Checkpoint every this many steps; 0 = only at the end.")
    seed: Seed = Field(0, description="Rollout sampling and data-order seed.")
    actor_micro_batch: int = Field(
        16, ge=1, description="Rollouts per forward/backward micro-batch of the actor update (gradient accumulation "
        "over the step's batch; the loss does not depend on it)."
    )
    actor_max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="Token budget of one actor-update micro-batch per process (the actor config's "
        "max_tokens_per_micro_batch; verl's ppo_max_token_len_per_gpu); when set it replaces `actor_micro_batch`."
    )
    log_prob_max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="Token budget of the actor's old-log-prob recompute (None = "
        "`actor_max_tokens_per_micro_batch`)."
    )
    disc_micro_batch: int = Field(
        16, ge=1, description="Sequences per forward pass when the discriminator scores and trains."
    )
    disc_max_tokens_per_micro_batch: int | None = Field(
        None, ge=1, description="Token budget (prompt + segment tokens) of one discriminator forward per process; "
        "when set it replaces `disc_micro_batch` (data/token_budget.py, as the actor's budget)."
    )
    rollout_batch_size: int = Field(
        64, ge=1, description="Rollouts generated per generate call (at least `n`: a prompt's group is never split)."
    )
    rollout_engine: Literal["hf", "vllm", "hf_colocated"] = Field(
        "hf", description="Rollout engine. `hf` = HF generate on the trained weights; `vllm` = one colocated engine "
        "per process, given the policy's weights before each step's rollout and asleep while it trains "
        "(prism_lab/rollout/colocate.py); `hf_colocated` = the same colocated path with a transformers copy per "
        "process (runs on a CPU)."
    )
    rollout_gpu_memory_utilization: float = Field(
        0.6, gt=0, lt=1, description="Share of each GPU the colocated vLLM engine reserves while it rolls out (the "
        "paper's alignment ran at 0.25, with parameter and optimizer offload)."
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="Training precision, resolved as every stage's (trainers/precision.py). fp32 by default, "
        "as alignment always ran; `auto` = bf16 where the device supports it."
    )

    resources: ResourcesConfig = resources_field(
        "`prompts_per_step` stays global and must be a multiple of `processes`: each process rolls out the "
        "same number of prompts (all `n` responses of each), and the discriminator and actor updates run on "
        "the gathered global batch (both models FSDP2-sharded).")

    @model_validator(mode="after")
    def _prompts_split_evenly(self) -> AlignConfig:
        if self.prompts_per_step % self.resources.processes:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}) must be a multiple of resources.processes "
                             f"({self.resources.processes}): every process rolls out as many prompts (their "
                             "generation passes run in step)")
        return self

    @property
    def batch_size(self) -> int:
        """Rollouts per step (prompts_per_step x n)."""
        return self.prompts_per_step * self.n

    def actor(self) -> ActorConfig:
        """The actor update of alignment as the :class:`ActorConfig` RL uses (the one place alignment's field
        names, kept for the grids that set them, meet the actor's): PPO-clip ``vanilla``, no KL or entropy term."""
        return ActorConfig(policy_loss="vanilla", lr=self.actor_lr, weight_decay=self.weight_decay,
                           grad_clip=self.grad_clip, clip_ratio_low=self.clip_ratio_low,
                           clip_ratio_high=self.clip_ratio_high, clip_ratio_c=self.dual_clip,
                           loss_agg_mode=self.loss_agg_mode, ppo_epochs=self.ppo_epochs,
                           max_tokens_per_micro_batch=self.actor_max_tokens_per_micro_batch,
                           log_prob_max_tokens_per_micro_batch=self.log_prob_max_tokens_per_micro_batch)

    def rollout(self) -> RolloutConfig:
        """What alignment rolls out with, as the :class:`RolloutConfig` RL uses: generate batches of
        ``rollout_batch_size`` sequences, at least ``n`` (a prompt's group is never split)."""
        return RolloutConfig(n=self.n, temperature=self.temperature, top_p=self.top_p,
                             max_prompt_length=self.max_prompt_length, max_new_tokens=self.max_new_tokens,
                             engine=self.rollout_engine, batch_size=max(self.n, self.rollout_batch_size),
                             seed=self.seed, gpu_memory_utilization=self.rollout_gpu_memory_utilization)
