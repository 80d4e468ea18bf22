"""RLVR training loop (stage 3): GRPO / DAPO / GSPO on a Qwen3-VL policy with the rule reward.

One training step (docs/prism_method.md §7.2, docs/rl_objectives.md)::

    prompts  <- next `prompts_per_step` examples of a seeded per-epoch permutation of the RL data
                (x gen_batch_multiplier when DAPO dynamic sampling is on)
    rollouts <- sample_rollouts(engine, prompts, cfg.rollout())   (n per prompt, T, top_p; log-probs kept)
    reward   <- compute_score(text, gt) = acc_weight*acc + format_weight*format
                (+ DAPO overlong penalty when algo.overlong_buffer.enabled; buffer resolved
                against the rollout's max_new_tokens)
    DAPO     <- drop zero-variance groups on algo.filter_groups.metric, regenerate until
                prompts_per_step groups survive (<= max_num_gen_batches, else PrismError)
    A_i      <- GRPO advantage grouped by prompt
    update   <- mini_batches_per_rollout mini-batches x ppo_epochs; micro-batches of
                cfg.micro_batch_size sequences with gradient accumulation; the aggregation gets
                the mini-batch totals (tokens / sequences), so the loss and gradient do not depend
                on the micro-batch size; AdamW, linear warmup then constant lr, grad clip;
                entropy bonus and KL-to-reference loss only when their coefficients are > 0.

Old log-probs. With one mini-batch and one epoch (``algo.is_on_policy``) every micro-batch
forward runs with the rollout parameters, so PPO's ``old_logp`` is known without another pass:
the rollout engine's log-probs are used (HF engine, fp32). Each micro-batch compares them with
its own forward; where they disagree by more than ``logprob_tolerance`` the forward's detached
values are used instead (that IS the recomputation, at no extra cost) and
``rollout/logprob_fallback`` counts it. Off-policy settings (several mini-batches or epochs),
bf16, engines without log-probs, or the vLLM engine recompute ``old_logp`` with a no-grad pass
(:func:`prism_lab.trainers.actor.recompute_logprobs`) before the first update.

The log-prob distribution everywhere is ``log softmax(logits / T)`` with the vision placeholder
tokens masked (see :mod:`prism_lab.rollout`).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from prism_lab.algos.advantages import compute_advantage
from prism_lab.algos.dapo import GenBatch, accumulate_until
from prism_lab.config.algorithms import AlgorithmConfig, resolve_algorithm
from prism_lab.config.rl import RLConfig
from prism_lab.data.collate import even_split
from prism_lab.errors import ConfigError
from prism_lab.rollout import (
    Prompt,
    RolloutEngine,
    build_prompt_inputs,
    pad_token_id,
    vision_token_ids,
)
from prism_lab.rollout.colocate import make_training_engine
from prism_lab.rollout.inputs import image_chunks_per_row
from prism_lab.rollout.sample import sample_rollouts
from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.actor import (
    micro_batches,
    ppo_update,
    recompute_logprobs,
)
from prism_lab.trainers.checkpoint import RESUME_DIR, load_resume, remove_resume_state, save_resume
from prism_lab.trainers.common import TimeBudget, make_cosine_scheduler
from prism_lab.trainers.precision import autocast_for, resolve_precision
from prism_lab.trainers.recipe import StepPlan, run_steps, start_run
from prism_lab.trainers.rl_samples import RLResult, RLSample, score_rollouts
from prism_lab.trainers.sampling import EpochSampler

logger = logging.getLogger(__name__)

__all__ = [
    "RESUME_DIR",
    "RLResult",
    "RLSample",
    "score_rollouts",
    "train_rl",
]

LOGPROB_TOLERANCE = 1e-3


# --------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class _RLRun:
    def __init__(self, model, processor, examples, cfg: RLConfig, algo: AlgorithmConfig, *, log_fn, out_dir,
                 engine, heartbeat, score_fn, logprob_tolerance, max_steps, env=None, checkpoint_dir=None):
        self.model = model
        self.processor = processor
        self.examples = list(examples)
        self.cfg = cfg
        self.algo = algo
        self.rollout = cfg.rollout()  # what every generate call of the run samples with, whole
        self.log_fn = log_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.heartbeat = heartbeat
        self.score_fn = score_fn
        self.total_steps = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
        self.env = env if env is not None else start_run(cfg.resources)
        self.budget = TimeBudget(cfg.max_minutes)
        self.acc = None
        mp = resolve_precision(cfg.precision, next(model.parameters()).device.type if not self.env.sharded
                               else self.env.device.type)
        if self.env.sharded:
            self._check_shardable(cfg, algo)
            self.acc = dist_.ShardedAccelerator(self.env, cfg.resources, mp)
            self.model = model = self.acc.prepare_model(model)
        elif cfg.resources.gradient_checkpointing:
            dist_.enable_gradient_checkpointing(model)
        if engine is None:
            engine = make_training_engine(model, processor, self.rollout, checkpoint_dir=checkpoint_dir,
                                          rank=self.env.rank,
                                          device=self.env.device if self.env.sharded else next(model.parameters()).device)
        self.engine: RolloutEngine = engine
        dist_.sync_engine(self.engine, self.env)
        self.suppress = list(getattr(self.engine, "suppress_token_ids", None) or vision_token_ids(model))
        self.pad_id = pad_token_id(model, processor)
        self.autocast, self.bf16 = autocast_for(mp, model)
        if self.acc is not None:  # FSDP2's MixedPrecisionPolicy casts; no autocast on top
            self.autocast, self.bf16 = self.acc.autocast, self.acc.param_dtype == torch.bfloat16
        self.device = next(model.parameters()).device
        # A frozen reference copy only when the KL loss is on (taken before any resume state is loaded).
        self.ref_model = None
        if algo.uses_reference:
            self.ref_model = copy.deepcopy(model).eval()
            for p in self.ref_model.parameters():
                p.requires_grad_(False)
        if algo.overlong_buffer.enabled:
            max_new = self.rollout.max_new_tokens
            buf = algo.overlong_buffer.resolve_len(max_new)  # ConfigError when len > max_new_tokens
            self.overlong = (max_new, buf, algo.overlong_buffer.penalty_factor)
        else:
            self.overlong = None
        # the actor config, passed whole to the shared update and its registered loss
        self.actor = algo
        if algo.loss_agg_mode == "seq-mean-token-sum-norm" and algo.loss_scale_factor is None:
            # constant divisor: micro-batch invariant
            self.actor = algo.model_copy(update={"loss_scale_factor": float(self.rollout.max_new_tokens)})
        self.logprob_tolerance = logprob_tolerance
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=algo.lr, weight_decay=algo.weight_decay, betas=(0.9, 0.999))
        self.scheduler = make_cosine_scheduler(self.optimizer, total_steps=cfg.steps,
                                               warmup_steps=algo.num_warmup_steps(cfg.steps), min_lr_ratio=1.0)
        self._len_cache: dict[int, int] = {}
        self.sampler = EpochSampler(len(self.examples), cfg.seed, "rl/prompts", accept=self._prompt_fits,
                                    what="RL prompts of at most max_prompt_length tokens")
        engine_kind = getattr(self.engine, "kind", "custom")
        self.trust_rollout_logprobs = engine_kind == "hf" and not self.bf16
        self.recompute_calls = 0

    @staticmethod
    def _check_shardable(cfg: RLConfig, algo: AlgorithmConfig) -> None:
        world = cfg.resources.processes
        if algo.uses_reference:
            raise ConfigError("rl: a KL reference model (kl_loss_coef > 0) is not supported with resources.processes > 1 yet")
        if cfg.prompts_per_step < world:
            raise ConfigError(f"rl.prompts_per_step ({cfg.prompts_per_step}) must be at least resources.processes ({world}): "
                              "every process rolls out its share of the prompts")

    # ---------------------------------------------------------------- data
    def _prompt(self, i: int) -> Prompt:
        ex = self.examples[i]
        return Prompt(messages=list(ex.prompt), images=ex.load_images())

    def _prompt_fits(self, i: int) -> bool:
        if i not in self._len_cache:
            batch = build_prompt_inputs(self.processor, [self._prompt(i)])
            self._len_cache[i] = int(batch["input_ids"].shape[1])
        return self._len_cache[i] <= self.rollout.max_prompt_length

    # ---------------------------------------------------------------- one step
    def _generate(self, step: int, k: int, n_prompts: int):
        idx = self.sampler.take(n_prompts)  # the global batch (every rank draws the same)
        prompts = [self._prompt(i) for i in idx]
        mine = dist_.shard_slice(list(range(len(idx))), self.env)  # positions this rank rolls out
        exs = [self.examples[idx[j]] for j in mine]
        ranked = (self.env.rank,) if self.env.sharded else ()  # each rank samples its own share
        seed = self.rollout.seed_for("rl/rollout", step, k, *ranked)
        t0 = time.perf_counter()
        with self.autocast():
            rollouts = sample_rollouts(self.engine, [prompts[j] for j in mine], self.rollout, seed=seed,
                                       batch_prompts=n_prompts)
        t1 = time.perf_counter()
        scored = score_rollouts(rollouts, exs, acc_weight=self.cfg.acc_weight, format_weight=self.cfg.format_weight,
                                overlong=self.overlong, score_fn=self.score_fn)
        t2 = time.perf_counter()
        self._t_gen += t1 - t0
        self._t_score += t2 - t1
        samples = [
            RLSample(prompt_key=-1, group=(k, mine[r.prompt_index]), token_ids=list(r.token_ids),
                     rollout_logprobs=r.logprobs, finish_reason=r.finish_reason, score=s, acc=a, format=f, reward=rew)
            for r, (rew, s, a, f) in zip(rollouts, scored)
        ]
        if self.env.sharded:  # every rank gets every sample, in prompt order (as one process makes them)
            gathered = [x for part in dist_.all_gather_objects(samples, self.env) for x in part]
            samples = sorted(gathered, key=lambda x: x.group[1])
        self._all_generated.extend(samples)
        metric = [s.acc if self.algo.filter_groups.metric == "acc" else s.reward for s in samples]
        return GenBatch(payload=(prompts, samples), values=metric, group_ids=[s.group for s in samples])

    def step(self, step: int) -> dict[str, float]:
        """One RL step (rollout, reward, advantage, update); the metrics carry ``step`` (1-based)."""
        metrics = self._step(step)
        metrics["step"] = float(step + 1)
        return metrics

    def _step(self, step: int) -> dict[str, float]:
        cfg, algo = self.cfg, self.algo
        t_start = time.perf_counter()
        self._t_gen = self._t_score = 0.0
        self._all_generated: list[RLSample] = []
        fg = algo.filter_groups
        n_prompts = math.ceil(cfg.prompts_per_step * fg.gen_batch_multiplier) if fg.enabled else cfg.prompts_per_step
        ds = accumulate_until(lambda k: self._generate(step, k, n_prompts), target_groups=cfg.prompts_per_step,
                              max_num_gen_batches=fg.max_num_gen_batches, enabled=fg.enabled)
        # Training batch: selected samples with their prompts (unique prompts in order).
        prompts: list[Prompt] = []
        samples: list[RLSample] = []
        for b, sel in zip(ds.batches, ds.selected):
            b_prompts, b_samples = b.payload
            keymap: dict[int, int] = {}
            for j in sel:
                s = b_samples[j]
                pi = s.group[1]
                if pi not in keymap:
                    keymap[pi] = len(prompts)
                    prompts.append(b_prompts[pi])
                s.prompt_key = keymap[pi]
                samples.append(s)
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
        adv = compute_advantage(algo.adv_estimator, rewards, [s.group for s in samples], eps=algo.adv_eps,
                                norm_by_std=algo.norm_adv_by_std)
        for s, a in zip(samples, adv.tolist()):
            s.advantage = a
        t_train0 = time.perf_counter()
        train_metrics = self._update(prompts, samples)
        updated = getattr(self.engine, "policy_updated", None)
        if updated is not None:  # an engine with its own copy of the weights (colocated vLLM) syncs before rolling out
            updated()
        t_end = time.perf_counter()
        gen = self._all_generated
        metrics: dict[str, float] = {
            "reward/mean": _mean([s.reward for s in gen]),
            "score/mean": _mean([s.score for s in gen]),
            "acc/mean": _mean([s.acc for s in gen]),
            "format/mean": _mean([s.format for s in gen]),
            "response_length/mean": _mean([len(s.token_ids) for s in gen]),
            "response_length/max": float(max(len(s.token_ids) for s in gen)),
            "response/clip_ratio": _mean([1.0 if s.finish_reason == "length" else 0.0 for s in gen]),
            "batch/reward_mean": float(rewards.mean()),
            "batch/num_samples": float(len(samples)),
            "filtered_group_share": ds.filtered_share,
            "dapo/num_gen_batches": float(ds.num_gen_batches),
            "time/generate": self._t_gen,
            "time/score": self._t_score,
            "time/train": t_end - t_train0,
            "time/step": t_end - t_start,
            "samples/s": len(gen) / max(t_end - t_start, 1e-9),
            "train_samples/s": len(samples) / max(t_end - t_start, 1e-9),
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        metrics.update(train_metrics)
        self.scheduler.step()
        return metrics

    # ---------------------------------------------------------------- update
    def _update(self, prompts: list[Prompt], samples: list[RLSample]) -> dict[str, float]:
        cfg, algo = self.cfg, self.algo
        prompt_batch = build_prompt_inputs(self.processor, prompts)
        prompt_rows = [s.prompt_key for s in samples]
        completions = [s.token_ids for s in samples]
        lengths = [len(c) for c in completions]
        chunks = image_chunks_per_row(prompt_batch)
        def cut(rows: list[int], max_tokens: int | None) -> list:
            return micro_batches(prompt_batch, prompt_rows, completions, rows, size=cfg.micro_batch_size,
                                 pad_token_id=self.pad_id, image_chunks=chunks, device=self.device, env=self.env,
                                 max_tokens=max_tokens)

        mini = [cut(rows, algo.max_tokens_per_micro_batch)
                for rows in even_split(list(range(len(samples))), algo.mini_batches_per_rollout) or [[]]]
        flat = ([mb for micro in mini for mb in micro] if algo.log_prob_token_budget == algo.max_tokens_per_micro_batch
                else cut(list(range(len(samples))), algo.log_prob_token_budget))  # the recompute's own budget
        have_lp = all(s.rollout_logprobs is not None and len(s.rollout_logprobs) == len(s.token_ids) for s in samples)
        from_rollout = algo.is_on_policy and have_lp and self.trust_rollout_logprobs
        lp_kw = dict(temperature=self.rollout.temperature, suppress_token_ids=self.suppress, autocast=self.autocast)
        if from_rollout:
            old = {i: torch.tensor(s.rollout_logprobs, dtype=torch.float32) for i, s in enumerate(samples)}
        else:
            self.recompute_calls += 1
            old = recompute_logprobs(self.model, flat, lengths, **lp_kw)
        ref = recompute_logprobs(self.ref_model, flat, lengths, **lp_kw) if self.ref_model is not None else None
        res = ppo_update(self.model, self.optimizer, mini, old, [s.advantage for s in samples], self.actor,
                         temperature=self.rollout.temperature, logprob_tolerance=self.logprob_tolerance,
                         suppress_token_ids=self.suppress, ref=ref, old_from_rollout=from_rollout,
                         autocast=self.autocast, env=self.env, backward=self.acc.backward if self.acc else None)
        res["clipfrac/low"] = res.get("actor/pg_clipfrac_low", 0.0)
        res["clipfrac/high"] = res.get("actor/pg_clipfrac_high", 0.0)
        res["approx_kl"] = res.get("actor/ppo_kl", 0.0)
        res["entropy"] = res.get("actor/entropy", float("nan"))
        return res

    # ---------------------------------------------------------------- resume
    def save(self, step_done: int) -> None:
        if self.out_dir is None:
            return
        meta = {"step": step_done, "data": self.sampler.state(), "elapsed_s": self.budget.elapsed(),
                "algorithm": self.cfg.algorithm}
        save_resume(self.out_dir / RESUME_DIR, model=self.model, optimizer=self.optimizer,
                          scheduler=self.scheduler, meta=meta, env=self.env)

    def load(self) -> dict[str, Any] | None:
        if self.out_dir is None:
            return None
        return load_resume(self.out_dir / RESUME_DIR, model=self.model, optimizer=self.optimizer,
                                 scheduler=self.scheduler, env=self.env)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else float("nan")


def train_rl(
    model,
    processor,
    examples: Sequence[Any],
    cfg: RLConfig,
    algo: AlgorithmConfig | None = None,
    *,
    log: Callable[[int, dict[str, float]], None] | None = None,
    out_dir: str | Path | None = None,
    engine: RolloutEngine | None = None,
    heartbeat: Callable[[], None] | None = None,
    score_fn: Callable[..., Any] | None = None,
    logprob_tolerance: float = LOGPROB_TOLERANCE,
    max_steps: int | None = None,
    remove_resume: bool = False,
    env: dist_.DistEnv | None = None,
    checkpoint_dir: str | Path | None = None,
) -> RLResult:
    """Run the RL loop on ``model`` in place (no StageContext needed).

    ``examples``: objects with ``prompt`` (messages with ``<image>`` placeholders), ``load_images()``,
    ``ground_truth`` and ``equivalent_answers`` (:class:`prism_lab.data.rl_parquet.RLExample`).
    ``algo`` defaults to ``resolve_algorithm(cfg.algorithm, cfg.algorithm_overrides)``.
    ``log(step, metrics)`` is called every ``cfg.log_every`` steps (1-based step numbers).
    ``out_dir``: resumable state lives in ``out_dir/resume`` (saved every ``cfg.save_every`` steps,
    loaded when present); None disables resuming. ``max_steps`` stops after that many steps in
    total (the LR schedule still spans ``cfg.steps``; for tests of resuming).
    ``remove_resume``: delete the resume state after the last step. ``env``: the stage run's distributed env
    (:func:`~prism_lab.trainers.recipe.start_run`; None: started here). ``checkpoint_dir``: the input policy's
    checkpoint, which a colocated vLLM engine is built from (:mod:`prism_lab.rollout.colocate`).
    The loop around the steps (budgets, logging, heartbeat, saves) is :func:`~prism_lab.trainers.recipe.run_steps`.
    """
    if algo is None:
        algo = resolve_algorithm(cfg.algorithm, cfg.algorithm_overrides)
    if cfg.n < 2 and algo.adv_estimator in ("grpo", "dr_grpo"):
        logger.warning("n=%d: GRPO groups of one sample carry no group baseline", cfg.n)
    run = _RLRun(model, processor, examples, cfg, algo, log_fn=log, out_dir=out_dir, engine=engine,
                 heartbeat=heartbeat, score_fn=score_fn, logprob_tolerance=logprob_tolerance, max_steps=max_steps,
                 env=env, checkpoint_dir=checkpoint_dir)
    meta = run.load()
    start = 0
    if meta is not None:
        start = int(meta["step"])
        run.sampler.load(meta["data"])
        run.budget.already_spent_s = float(meta.get("elapsed_s", 0.0))
        logger.info("resuming RL from step %d (data epoch %d, cursor %d)", start, run.sampler.epoch, run.sampler.cursor)
    result = RLResult(steps_done=start, start_step=start, stopped_early=False)

    def keep(done: int, metrics: dict[str, float]) -> None:
        result.last_metrics = metrics
        result.history.append(metrics)

    plan = StepPlan(total=run.total_steps, start=start, log_every=cfg.log_every, save_every=cfg.save_every,
                    schedule_end=cfg.steps, budget=run.budget, save_on_stop=True)
    loop = run_steps(run, plan, run.env, log=log, heartbeat=heartbeat, after_step=keep)
    result.steps_done, result.stopped_early = loop.steps_done, loop.stopped_by == "time"
    result.elapsed_s = run.budget.elapsed()
    result.recompute_calls = run.recompute_calls
    if remove_resume and out_dir is not None:
        remove_resume_state(Path(out_dir) / RESUME_DIR)
    return result
