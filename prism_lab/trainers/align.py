"""Stage 2: PRISM on-policy adversarial distillation against the MoE discriminator (docs/prism_method.md §6).

:func:`run_align` is the loop, callable without a StageContext. One step, in the original's order (docs/prism_method.md §6.2):

1. pick ``prompts_per_step`` prompts (:class:`~prism_lab.trainers.sampling.EpochSampler`, repositioned from the step on resume)
   and roll out ``n`` responses each with the policy (``cfg.rollout()``: T, top_p, log-probs returned);
2. split every response at the caption boundary from token offsets (:func:`split_rollout`; no prefix
   re-decoding). Format-invalid responses use the fallback boundary ``max(1, L // 2)``;
3. score caption and cot (``prism``) or the whole response (``gad``) with the PRE-update discriminator in eval
   mode without grad. NaN/Inf scores are replaced by 0 and counted (``nonfinite_scores``); then the optional
   length correction, then the clip to ``±score_clip``; invalid samples get 0 scores and format flag 0;
4. advantages: :func:`grpo_multi_reward` (``cfg.advantage_mode``; modes other than "align" also get the rule
   accuracy from :func:`prism_lab.rewards.compute_score`) or, for ``gad``, :func:`gad_whole_response_advantage`;
5. update the discriminator (train mode, ``critic_epochs`` passes, one mini-batch = all rollouts):
   :func:`mm_gad_discriminator_loss` on student vs teacher caption/cot segments (each rollout paired with its own
   prompt's teacher segments) or, for ``gad``, :func:`gad_whole_response_loss` on whole responses. A non-finite
   grad norm skips the update (counted in ``d_skipped``);
6. update the policy with PPO-clip (vanilla, ε_low/ε_high, dual clip, ``loss_agg_mode`` over the whole batch,
   ``ppo_epochs`` passes), the rollout log-probs being the old log-probs (on-policy, ratio ≈ 1). A non-finite
   grad norm skips the update (``actor_skipped``).

Deviation for CPU cost (documented): each prompt's teacher segment is scored ONCE per forward pass and the
score is shared by its ``n`` rollouts, instead of ``n`` identical forwards. In eval mode this is exact; in train
mode the head-dropout mask is shared by the copies (same expectation, fewer independent dropout draws).

Metrics per step (``log(step, dict)``): ``d_loss``, ``d_acc``/``cap_acc``/``cot_acc`` (omitted when no rollout
is format-valid: the original logs a placeholder 0.92 there, which is not a measurement; ``d_has_valid`` says
which), ``valid_ratio``, ``format_rate``, ``score/{teacher,student}_{caption,cot}`` and ``gap/caption``,
``gap/cot`` (teacher − student, train-mode scores of the update forward, clipped, all samples, as the original
logs them), ``pre/student_{caption,cot}`` (the eval-mode scores used for the advantage, valid samples only),
``response_length``, ``truncated_rate``, ``adv/mean``, ``adv/std``, ``nonfinite_scores``, ``d_skipped``,
``actor_skipped``, ``d_grad_norm``, ``actor_grad_norm`` and the PPO metrics ``actor/*``. GAD logs
``score/teacher_response``, ``score/student_response``, ``gap/response`` instead of the caption/cot ones.

Resumable: ``out_dir/"resume"`` holds policy + discriminator weights, both optimizers, the RNG state and the step.

Multi-process (``cfg.resources.processes`` = N > 1, under torchrun): each rank rolls out all ``n`` responses of
its share of the step's prompts (every N-th one) and the rollouts are gathered, in prompt order, on every rank,
so the per-prompt groups of the advantage are whole. Policy and discriminator are both FSDP2-sharded
(:class:`~prism_lab.trainers.distributed.ShardedAccelerator`): the upcycled MoE discriminator is the largest
model of the recipe (the policy's backbone with ``num_experts`` copies of every MLP) and carries its own AdamW
state, so replicating it on every rank would cost more memory than the policy itself; sharding it also keeps its
resumable state in the same DCP format as ``disc_warmup``'s. Scoring is split over the ranks and gathered
(:class:`~prism_lab.trainers.align_variants.AlignStep`), so the discriminator loss and the advantages are the
single-process ones on the global batch; the actor update is the shared sharded PPO update. Rank 0 alone writes
the resumable state's metadata; each rank writes its DCP shard.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from prism_lab.algos.disc_loss import (
    replace_nonfinite,
)
from prism_lab.errors import ConfigError, DataError
from prism_lab.models.discriminator import Discriminator
from prism_lab.prompts import is_format_valid
from prism_lab.rollout import Prompt, vision_token_ids
from prism_lab.rollout.colocate import make_training_engine
from prism_lab.rollout.sample import sample_rollouts
from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.actor import (
    micro_batches,
    ppo_update,
    recompute_logprobs,
)
from prism_lab.trainers.align_variants import ALIGN_VARIANTS, AlignStep, AlignVariant, mean_or_nan
from prism_lab.trainers.checkpoint import (
    RESUME_DIR,
    load_align_resume,
    remove_resume_state,
    save_align_resume,
)
from prism_lab.trainers.common import set_seed
from prism_lab.trainers.disc_inputs import (
    DiscTokens,
    PromptBatch,
    disc_tokens,
    plain_ids,
    split_rollout,
)
from prism_lab.trainers.optim import clip_gradients
from prism_lab.trainers.precision import autocast_for, resolve_precision
from prism_lab.trainers.recipe import StepPlan, run_steps, start_run
from prism_lab.trainers.sampling import EpochSampler

log_ = logging.getLogger(__name__)

__all__ = [
    "AlignExample",
    "align_examples_from_rl",
    "load_align_resume",
    "run_align",
    "save_align_resume",
]

LogFn = Callable[[int, dict[str, float]], None]


@dataclass
class AlignExample:
    """One stage-2 prompt: messages (``<image>`` placeholders allowed), a loader of its images, the teacher
    segments and the verifiable answer (used only by advantage modes M2-M6)."""

    index: int
    messages: list[dict]
    load_images: Callable[[], list]
    teacher_caption: str
    teacher_cot: str
    ground_truth: str = ""
    equivalent_answers: tuple[str, ...] = ()
    where: str = ""

    def prompt(self) -> Prompt:
        return Prompt(messages=[dict(m) for m in self.messages], images=list(self.load_images()))


def align_examples_from_rl(rows: Sequence[Any]) -> list[AlignExample]:
    """:class:`AlignExample` objects from :class:`prism_lab.data.rl_parquet.RLExample` rows. A row without a
    non-empty teacher caption/cot is a :class:`DataError` naming the file and row."""
    out = []
    for r in rows:
        where = f"{getattr(r, 'source', '') or '<rl data>'}: row {getattr(r, 'row', '?')}"
        for fld in ("teacher_caption", "teacher_cot"):
            v = getattr(r, fld, None)
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{where}: field '{fld}': expected a non-empty teacher segment (PRISM alignment "
                                f"needs teacher_caption and teacher_cot), got {v!r}")
        out.append(AlignExample(index=int(r.index), messages=list(r.prompt), load_images=r.load_images,
                                teacher_caption=r.teacher_caption, teacher_cot=r.teacher_cot,
                                ground_truth=str(r.ground_truth), equivalent_answers=tuple(r.equivalent_answers),
                                where=where))
    return out


def _check_shardable(cfg: Any, env: dist_.DistEnv) -> None:
    """ConfigError unless every rank gets the same number of prompts: their generate calls (one FSDP
    all-gather per forward) must run in step."""
    if cfg.prompts_per_step % env.world_size:
        raise ConfigError(f"align.prompts_per_step ({cfg.prompts_per_step}) must be a multiple of "
                          f"resources.processes ({env.world_size}): every process rolls out as many prompts")


def _shard_models(policy: Any, disc: Any, cfg: Any, env: dist_.DistEnv, mp: str) -> Any:
    """FSDP2-shard policy and discriminator in place (sharded runs only); returns the accelerator whose
    ``backward`` scales this rank's share of a loss (None in one process). ``mp``: the run's precision
    (``resources.param_dtype: auto`` follows it)."""
    if not env.sharded:
        return None
    _check_shardable(cfg, env)
    acc = dist_.ShardedAccelerator(env, cfg.resources, mp)
    acc.prepare_model(policy)
    acc.prepare_model(disc)
    return acc


def global_rollouts(rolls: Sequence[Any], mine: Sequence[int], env: dist_.DistEnv) -> list[Any]:
    """Every rank's rollouts, in prompt order, with ``prompt_index`` made global (``mine[j]`` is the
    step position of this rank's ``j``-th prompt): the list one process makes from the whole batch."""
    local = [dataclasses.replace(r, prompt_index=mine[r.prompt_index]) for r in rolls]
    if not env.sharded:
        return local
    gathered = [r for part in dist_.all_gather_objects(local, env) for r in part]
    return sorted(gathered, key=lambda r: r.prompt_index)  # stable: each prompt's n rollouts keep their order


# ------------------------------------------------------------------------------------------ loop
def _check_teacher_segments(examples: Sequence[AlignExample]) -> None:
    if not examples:
        raise DataError("no alignment prompts")
    for ex in examples:
        for fld in ("teacher_caption", "teacher_cot"):
            v = getattr(ex, fld)
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{ex.where or f'prompt {ex.index}'}: field '{fld}': expected a non-empty teacher "
                                f"segment, got {v!r}")


def _fitting_prompts(processor: Any, examples: list[AlignExample], max_prompt_length: int) -> list[AlignExample]:
    """The prompts of at most ``max_prompt_length`` tokens (verl's filter_overlong_prompts), measured once."""
    keep: list[AlignExample] = []
    for s in range(0, len(examples), 32):
        chunk = examples[s:s + 32]
        lens = PromptBatch.build(processor, [e.prompt() for e in chunk]).batch["attention_mask"].sum(dim=1).tolist()
        keep += [e for e, n in zip(chunk, lens) if n <= max_prompt_length]
    if not keep:
        raise DataError(f"every alignment prompt is longer than max_prompt_length={max_prompt_length}")
    if len(keep) < len(examples):
        log_.warning("alignment: %d of %d prompts exceed max_prompt_length=%d and are skipped",
                     len(examples) - len(keep), len(examples), max_prompt_length)
    return keep


def _summary(history: list[dict[str, float]], keys: Sequence[str], **fields: Any) -> dict[str, Any]:
    last = history[-max(1, len(history) // 5):] if history else []

    def tail_mean(key: str) -> float | None:
        vals = [h[key] for h in last if key in h]
        return sum(vals) / len(vals) if vals else None

    return {**fields, "final": {k: tail_mean(k) for k in keys},
            "curves": {k: [(h["step"], h.get(k)) for h in history] for k in keys}}


@dataclass
class _AlignRun:
    """One alignment run after its setup (:func:`_setup`): the models, optimizers, engine and data, and the step and
    save :func:`~prism_lab.trainers.recipe.run_steps` calls. One step reads top to bottom in the original's order."""

    policy: Any
    processor: Any
    disc: Discriminator
    cfg: Any
    env: dist_.DistEnv
    variant: AlignVariant
    toks: DiscTokens
    acc: Any  # the ShardedAccelerator of a sharded run, else None
    autocast: Callable[[], Any]
    engine: Any
    rollout: Any  # the RolloutConfig every generate call samples with
    actor: Any  # the ActorConfig, passed whole to the shared PPO update and its registered loss
    actor_opt: torch.optim.Optimizer
    disc_opt: torch.optim.Optimizer
    suppress: list[int]
    examples: list[AlignExample]
    sampler: EpochSampler
    total: int
    start: int
    history: list[dict[str, float]]
    out_path: Path | None
    teacher_ids: list[Any] = dataclasses.field(default_factory=list)

    def _teacher(self, i: int) -> Any:
        """Token ids of example ``i``'s teacher caption, cot and whole response (made on first use)."""
        if self.teacher_ids[i] is None:
            ex, R, p = self.examples[i], self.rollout.max_new_tokens, self.processor
            self.teacher_ids[i] = (plain_ids(p, ex.teacher_caption, R), plain_ids(p, ex.teacher_cot, R),
                                   plain_ids(p, ex.teacher_caption + "\n" + ex.teacher_cot, R))
        return self.teacher_ids[i]

    def _roll_out(self, step: int, prompts: list[Prompt]) -> list[Any]:
        """This rank's share of the prompts rolled out, then every rank's rollouts in prompt order."""
        env = self.env
        mine = dist_.shard_slice(list(range(len(prompts))), env)
        ranked = (env.rank,) if env.sharded else ()  # each rank samples its own share
        with self.autocast():
            rolls = sample_rollouts(self.engine, [prompts[j] for j in mine], self.rollout,
                                    seed=self.rollout.seed_for("align/rollout", step, *ranked))
        return global_rollouts(rolls, mine, env)

    def step(self, step: int) -> dict[str, float]:
        cfg, env, toks, processor = self.cfg, self.env, self.toks, self.processor
        t0 = time.monotonic()
        idx = self.sampler.take(cfg.prompts_per_step)
        prompts = [self.examples[i].prompt() for i in idx]
        # 1. rollouts (this rank's share of the prompts, then every rank's); 2. split at the caption boundary
        rolls = self._roll_out(step, prompts)
        t_roll = time.monotonic() - t0
        splits = [split_rollout(processor, r.token_ids) for r in rolls]
        st = AlignStep(pb=PromptBatch.build(processor, prompts), rows=[r.prompt_index for r in rolls], rollouts=rolls,
                       splits=splits, valid=torch.tensor([sp.valid for sp in splits], dtype=torch.bool),
                       teacher_ids=[self._teacher(i) for i in idx],
                       answers=[(self.examples[i].ground_truth, self.examples[i].equivalent_answers) for i in idx],
                       toks=toks, terminator=cfg.terminator_convention,
                       score_kw=dict(pad_token_id=toks.pad, positions=cfg.critic_positions, micro_batch=cfg.disc_micro_batch,
                                     max_tokens=cfg.disc_max_tokens_per_micro_batch),
                       env=env)
        B = len(rolls)
        metrics: dict[str, float] = {
            "valid_ratio": float(st.fmt.mean()),
            "format_rate": sum(is_format_valid(sp.text) for sp in splits) / max(1, B),
            "response_length": sum(len(r.token_ids) for r in rolls) / max(1, B),
            "truncated_rate": sum(r.finish_reason == "length" for r in rolls) / max(1, B),
        }
        # 3-4. advantages from the pre-update discriminator (eval mode, no grad)
        self.disc.eval()
        with torch.no_grad(), self.autocast():
            adv, nonfinite, m = self.variant.advantages(self.disc, st, cfg)
        adv, n_bad_adv = replace_nonfinite(adv.float())
        metrics.update(m, **{"adv/mean": mean_or_nan(adv), "adv/std": float(adv.std()) if adv.numel() > 1 else 0.0})
        if n_bad_adv:
            metrics["nonfinite_advantages"] = float(n_bad_adv)
        # 5. discriminator update; 6. actor update
        nonfinite += self._update_disc(st, metrics)
        metrics["nonfinite_scores"] = float(nonfinite)
        if nonfinite and env.is_main:
            log_.warning("alignment step %d: %d non-finite discriminator scores replaced by 0", step + 1, nonfinite)
        metrics.update(self._update_actor(st, rolls, adv))
        metrics.update({"time/rollout_s": t_roll, "time/step_s": time.monotonic() - t0})
        self.history.append({"step": step + 1, **{k: v for k, v in metrics.items()
                                                  if isinstance(v, float) and math.isfinite(v)}})
        return metrics

    def _update_disc(self, st: AlignStep, metrics: dict[str, float]) -> int:
        """Train mode, ``critic_epochs`` passes over one mini-batch of every rollout; a non-finite grad norm skips
        the update. Adds its metrics; returns the non-finite scores its forwards replaced."""
        disc, cfg = self.disc, self.cfg
        disc.train()
        d_skipped = nonfinite = 0
        dm: dict[str, float] = {}
        for _ in range(cfg.critic_epochs):
            self.disc_opt.zero_grad(set_to_none=True)
            with self.autocast():
                loss, n_bad, dm = self.variant.disc_loss(disc, st, cfg)
            nonfinite += n_bad
            st.backward(loss, scale=self.env.world_size)
            gn = clip_gradients([p for p in disc.parameters() if p.requires_grad], cfg.grad_clip)
            if math.isfinite(gn):
                self.disc_opt.step()
                dm["d_grad_norm"] = float(gn)
            else:
                d_skipped += 1
                self.disc_opt.zero_grad(set_to_none=True)
        disc.eval()
        metrics.update(dm, d_skipped=float(d_skipped))
        return nonfinite

    def _update_actor(self, st: AlignStep, rolls: list[Any], adv: torch.Tensor) -> dict[str, float]:
        """PPO-clip, on-policy: the rollout's log-probs are the old ones when it returned them."""
        policy, actor, B = self.policy, self.actor, len(rolls)
        comps = [r.token_ids for r in rolls]

        def cut(max_tokens: int | None) -> list:
            return micro_batches(st.pb.batch, st.rows, comps, list(range(B)), size=self.cfg.actor_micro_batch,
                                 pad_token_id=self.toks.pad, image_chunks=st.pb.image_chunks,
                                 device=next(policy.parameters()).device, env=self.env, max_tokens=max_tokens)

        mini = [cut(actor.max_tokens_per_micro_batch)]
        T = self.rollout.temperature
        from_rollout = all(r.logprobs is not None for r in rolls)
        old = {i: torch.as_tensor(list(r.logprobs), dtype=torch.float32) for i, r in enumerate(rolls)} if from_rollout \
            else recompute_logprobs(policy, mini[0] if actor.log_prob_token_budget == actor.max_tokens_per_micro_batch
                                    else cut(actor.log_prob_token_budget), [len(c) for c in comps],
                                    temperature=T, suppress_token_ids=self.suppress, autocast=self.autocast)
        out = ppo_update(policy, self.actor_opt, mini, old, adv.tolist(), actor, temperature=T,
                         suppress_token_ids=self.suppress, old_from_rollout=from_rollout, env=self.env,
                         autocast=self.autocast, backward=self.acc.backward if self.acc is not None else None)
        updated = getattr(self.engine, "policy_updated", None)
        if updated is not None:  # an engine with its own copy of the weights (colocated vLLM) syncs before rolling out
            updated()
        policy.eval()
        return out

    def save(self, steps_done: int) -> None:
        if self.out_path is not None:
            save_align_resume(self.out_path, policy=self.policy, disc=self.disc, actor_opt=self.actor_opt,
                              disc_opt=self.disc_opt, meta={"step": steps_done, "total_steps": self.total,
                                                            "history": self.history}, env=self.env)


def _setup(policy: Any, processor: Any, disc: Discriminator, examples: Sequence[AlignExample], cfg: Any, *,
           out_dir: str | Path | None, engine: Any | None, max_steps: int | None,
           env: dist_.DistEnv | None, checkpoint_dir: str | Path | None = None) -> _AlignRun:
    """The run before its first step: seeds, precision, sharding (before the optimizers: FSDP2 replaces the
    parameters), the engine, both optimizers, the prompts that fit, and the resume state when there is one."""
    _check_teacher_segments(examples)
    set_seed(cfg.seed)
    env = env if env is not None else start_run(getattr(cfg, "resources", None))
    mp = resolve_precision(cfg.precision, env.device.type if env.sharded else next(policy.parameters()).device.type)
    acc = _shard_models(policy, disc, cfg, env, mp)
    rollout, actor = cfg.rollout(), cfg.actor()
    if engine is None:
        engine = make_training_engine(policy, processor, rollout, checkpoint_dir=checkpoint_dir, rank=env.rank,
                                      device=env.device if env.sharded else next(policy.parameters()).device)
    dist_.sync_engine(engine, env)
    actor_opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=actor.lr,
                                  weight_decay=actor.weight_decay)
    disc_opt = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=cfg.critic_lr,
                                 weight_decay=cfg.weight_decay)
    examples = _fitting_prompts(processor, list(examples), rollout.max_prompt_length)
    total = cfg.steps if max_steps is None else min(cfg.steps, int(max_steps))
    out_path = Path(out_dir) if out_dir is not None else None
    meta = load_align_resume(out_path, policy=policy, disc=disc, actor_opt=actor_opt, disc_opt=disc_opt, env=env) \
        if out_path is not None else None
    start, history = (int(meta["step"]), list(meta.get("history", []))) if meta else (0, [])
    if meta:
        log_.info("resuming alignment at step %d/%d", start, total)
    sampler = EpochSampler(len(examples), cfg.seed, "align/prompts", what="alignment prompts")
    sampler.seek(start * cfg.prompts_per_step)
    return _AlignRun(policy=policy, processor=processor, disc=disc, cfg=cfg, env=env,
                     variant=ALIGN_VARIANTS.get(cfg.variant)(), toks=disc_tokens(processor), acc=acc,
                     autocast=acc.autocast if acc is not None else autocast_for(mp, policy)[0], engine=engine,
                     rollout=rollout, actor=actor, actor_opt=actor_opt, disc_opt=disc_opt,
                     suppress=vision_token_ids(policy), examples=examples, sampler=sampler, total=total, start=start,
                     history=history, out_path=out_path, teacher_ids=[None] * len(examples))


def run_align(
    policy: Any,
    processor: Any,
    disc: Discriminator,
    examples: Sequence[AlignExample],
    cfg: Any,
    *,
    out_dir: str | Path | None = None,
    log: LogFn | None = None,
    heartbeat: Callable[[], None] | None = None,
    engine: Any | None = None,
    max_steps: int | None = None,
    keep_resume: bool = False,
    env: dist_.DistEnv | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``cfg.steps`` alignment steps of ``cfg.variant`` on ``policy`` and ``disc`` in place (``cfg``: an
    AlignConfig); the variant (align_variants.py) decides the scores, advantages and discriminator loss.

    ``engine``: a rollout engine to use instead of the stage's (:func:`~prism_lab.rollout.colocate.make_training_engine`:
    HF on ``policy``, or a colocated vLLM engine built from ``checkpoint_dir``, the input policy's checkpoint) (it
    must sample from ``policy``; if it returns no log-probs they are recomputed). ``out_dir``: where the resume
    state lives (``out_dir/resume``; restored when present, saved every ``cfg.save_every`` steps, removed at the
    end unless ``keep_resume``). Final weights are NOT written here (the stage saves them). ``env``: the stage
    run's distributed env (None: started here). The loop around the steps is
    :func:`~prism_lab.trainers.recipe.run_steps`; the precision is ``cfg.precision`` (trainers/precision.py).
    Returns a summary.
    """
    n_given = len(examples)
    run = _setup(policy, processor, disc, examples, cfg, out_dir=out_dir, engine=engine, max_steps=max_steps, env=env,
                 checkpoint_dir=checkpoint_dir)
    env = run.env
    run_steps(run, StepPlan(total=run.total, start=run.start, save_every=cfg.save_every), env,
              log=(lambda done, values: log(done, dict(values))) if log is not None else None, heartbeat=heartbeat)
    dist_.barrier(env)
    if run.out_path is not None and not keep_resume and env.is_main:
        remove_resume_state(run.out_path / RESUME_DIR)
    history = run.history
    keys = ["format_rate", "valid_ratio", "d_acc", "d_loss", "response_length", *run.variant.summary_keys]
    return _summary(history, keys, steps=run.total, resumed_from=run.start, variant=cfg.variant,
                    prompts=len(run.examples), overlong_prompts_skipped=n_given - len(run.examples),
                    nonfinite_scores=sum(int(h.get("nonfinite_scores", 0)) for h in history))
