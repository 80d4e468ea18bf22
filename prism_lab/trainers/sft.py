"""The SFT loop: AdamW + cosine-with-warmup, assistant-only loss, gradient accumulation, accelerate.

:func:`train_sft` trains a policy in place on a list of SFT examples. It is resumable: every
``cfg.save_every`` steps it writes model, optimizer, scheduler, RNG states and the data position to
``resume_dir`` (atomically), and when ``resume_dir`` holds a state on start it continues from it, so an
interrupted run that is restarted ends with the same weights as an uninterrupted one.

Data order: a fresh permutation per epoch (:class:`~prism_lab.trainers.sampling.EpochSampler`, stream ``sft/data``); micro-batches
take consecutive ``batch_size`` slices of the stream of epochs (a step can straddle two epochs).
Loss: summed token cross-entropy over the labelled (assistant) tokens of all micro-batches of one
optimizer step, divided by their number, so accumulation equals one large batch. For the same reason a
micro-batch can go through the model as ``cfg.length_groups`` runs of rows of similar length, each padded on its
own: the same gradient for less padding.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prism_lab.config.sft import SFTConfig
from prism_lab.data.collate import IGNORE_INDEX, SFTCollator
from prism_lab.errors import CheckpointError, DataError
from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.checkpoint import load_resume, save_resume
from prism_lab.trainers.common import (
    TimeBudget,
    format_duration,
    make_cosine_scheduler,
    set_seed,
    setup_threads,
    warmup_steps_for,
)
from prism_lab.trainers.optim import clip_gradients
from prism_lab.trainers.precision import resolve_precision
from prism_lab.trainers.recipe import StepPlan, run_steps, start_run
from prism_lab.trainers.sampling import EpochSampler

log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Raised by ``train_sft(stop_after_step=k)`` after step k (simulates a killed run, for tests)."""


@dataclass
class SFTResult:
    steps: int
    total_steps: int
    final_loss: float | None  # mean step loss over the last logging window
    last_step_loss: float | None
    samples_seen: int
    tokens_seen: int  # every non-padding token fed to the model (prompt, image and response)
    label_tokens_seen: int  # tokens the loss covered
    epochs_done: float
    wall_s: float  # this attempt
    train_s: float  # all attempts together (what the time budget counts)
    samples_per_s: float
    tokens_per_s: float
    stopped_by: str  # "max_steps" | "epochs" | "time"
    resumed_from_step: int | None
    warmup_steps: int
    mixed_precision: str
    device: str
    threads: int
    history: list[dict[str, float]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return d


# ------------------------------------------------------------------------------------------ plan
def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    return max(1, math.ceil(n_examples / (batch_size * grad_accum)))


def total_steps_for(cfg: SFTConfig, n_examples: int) -> int:
    """``min(max_steps, ceil(epochs * ceil(N / (batch * accum))))``."""
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch(n_examples, cfg.batch_size, cfg.grad_accum)))
    return min(total, cfg.max_steps) if cfg.max_steps else total


def _param_groups(model: torch.nn.Module, weight_decay: float, lr: float,
                  vision_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Decay matrices; never biases and norm weights (1-D parameters), as HF Trainer does.

    Parameters of the vision tower (``model.visual``) get ``lr * vision_lr_scale``.
    """
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_vision = ".visual." in f".{name}"
            buckets.setdefault((is_vision, p.ndim >= 2), []).append(p)
    groups = []
    for (is_vision, decays), params in sorted(buckets.items()):
        groups.append({"params": params, "weight_decay": weight_decay if decays else 0.0,
                       "lr": lr * (vision_lr_scale if is_vision else 1.0)})
    return groups


# ------------------------------------------------------------------------------------------ progress
class _Progress:
    """A rich progress bar on a TTY; always a one-line log every ``log_every`` steps."""

    def __init__(self, total: int, start: int, enabled: bool | None, quiet: bool = False) -> None:
        self.bar = None
        self.quiet = quiet  # ranks other than 0 print nothing
        use = sys.stdout.isatty() if enabled is None else enabled
        if use:
            try:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                )

                self.bar = Progress(TextColumn("sft"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    TextColumn("{task.fields[info]}"), transient=True)
                self.task = self.bar.add_task("sft", total=total, completed=start, info="")
                self.bar.start()
            except Exception:  # noqa: BLE001 - a progress bar must never break training
                self.bar = None

    def update(self, step: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ------------------------------------------------------------------------------------------ loop
def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@dataclass
class _Counters:
    """Counters of an SFT run: what the resumable state stores beside the weights and optimizer."""

    step: int = 0
    epoch: int = 0
    pos: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    label_tokens: int = 0
    spent_before: float = 0.0
    resumed_from: int | None = None


def _restore(resume_dir: str | Path | None, *, model, optimizer, scheduler, n: int, total: int, env) -> _Counters:
    """The counters of the resumable state in ``resume_dir`` (weights, optimizer and scheduler restored too;
    sharded states are read by every rank, see trainers/distributed.py)."""
    meta = load_resume(resume_dir, model=model, optimizer=optimizer, scheduler=scheduler, env=env) \
        if resume_dir is not None else None
    if meta is None:
        return _Counters()
    if meta.get("n_examples") != n or meta.get("total_steps") != total:
        raise CheckpointError(
            f"{resume_dir}: resumable state is for {meta.get('n_examples')} examples / "
            f"{meta.get('total_steps')} steps, this run has {n} / {total}; delete it to start over")
    st = _Counters(step=int(meta["step"]), epoch=int(meta["epoch"]), pos=int(meta["pos"]),
                         samples_seen=int(meta["samples_seen"]), tokens_seen=int(meta["tokens_seen"]),
                         label_tokens=int(meta["label_tokens_seen"]), spent_before=float(meta["train_s"]),
                         resumed_from=int(meta["step"]))
    msg = f"[sft] resumed from step {st.step}/{total} (epoch {st.epoch}, position {st.pos}) in {resume_dir}"
    log.info(msg)
    if env.is_main:
        print(msg, flush=True)
    return st


def _accumulate(model, accelerator, batches: list[dict[str, torch.Tensor]], device, env) -> tuple[float, int, int]:
    """Forward and backward over this rank's rows of the micro-batches of one optimizer step; the loss is
    the mean over every label token of the step on every rank. Returns the global (summed token loss,
    label tokens, attended tokens)."""
    n_lab = int(dist_.all_reduce_sum(sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches), env))
    denom = max(1, n_lab)
    loss_sum, step_tokens = 0.0, 0
    for b in batches:
        step_tokens += int(b["attention_mask"].sum())
        b = _to(b, device)
        labels = b.pop("labels")
        with accelerator.autocast():
            logits = model(**b, use_cache=False).logits
        tok_loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        accelerator.backward(tok_loss / denom)
        loss_sum += float(tok_loss.detach())
    if env.sharded:  # the global loss and token count (every rank saw its share)
        loss_sum, step_tokens = dist_.all_reduce_sum(loss_sum, env), int(dist_.all_reduce_sum(step_tokens, env))
    return loss_sum, n_lab, step_tokens


def _window_record(window: list[tuple[float, int, int]], seconds: float, *, lr: float, grad_norm: float,
                   epoch: float) -> dict[str, float]:
    """The logged metrics of the steps since the last log: mean loss, throughput, lr, grad norm, epoch."""
    losses = [w[0] for w in window if math.isfinite(w[0])]
    dt = max(1e-9, seconds)
    return {"loss": sum(losses) / len(losses) if losses else float("nan"), "lr": lr, "grad_norm": grad_norm,
            "tokens_per_s": sum(w[2] for w in window) / dt, "samples_per_s": sum(w[1] for w in window) / dt,
            "epoch": epoch}


def _log_line(step: int, total: int, rec: dict[str, float], *, elapsed: float, rate: float) -> str:
    return (f"[sft] step {step}/{total} loss {rec['loss']:.4f} lr {rec['lr']:.3g} grad {rec['grad_norm']:.3f} "
            f"{rec['samples_per_s']:.1f} samples/s {rec['tokens_per_s']:.0f} tok/s epoch {rec['epoch']:.2f} "
            f"elapsed {format_duration(elapsed)} eta {format_duration((total - step) / rate if rate > 0 else 0.0)}")


class _SFTRun:
    """The SFT trainer's own part of the recipe (trainers/recipe.py): its setup in ``__init__``, one optimizer step
    in :meth:`step`, the windowed log record in :meth:`record` and its resumable state in :meth:`save`."""

    def __init__(self, model, processor, examples: Sequence[Any], cfg: SFTConfig, *, env, resume_dir,
                 progress: bool | None) -> None:
        from accelerate import Accelerator

        self.cfg, self.env, self.examples = cfg, env, examples
        self.resume_dir = resume_dir
        self.threads = setup_threads(cfg.threads)
        set_seed(cfg.seed)
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
        self.mp = mp = resolve_precision(cfg.precision, device_type)
        if env.sharded:
            self.accelerator = dist_.ShardedAccelerator(env, cfg.resources, mp)
        else:
            self.accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision=mp)
        self.n = n = len(examples)
        if n == 0:
            raise DataError("no SFT examples to train on")
        self.total = total = total_steps_for(cfg, n)
        self.warmup = warmup_steps_for(total, cfg.warmup_ratio)
        self.collate = SFTCollator(processor, max_length=cfg.max_length)
        model.train()
        if env.sharded:  # shard first: the optimizer must hold the sharded parameters
            model = self.accelerator.prepare_model(model)
        elif cfg.resources.gradient_checkpointing:
            dist_.enable_gradient_checkpointing(model)
        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay, cfg.lr, cfg.vision_lr_scale),
                                           lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay)
        self.scheduler = make_cosine_scheduler(self.optimizer, total_steps=total, warmup_steps=self.warmup,
                                               min_lr_ratio=cfg.min_lr_ratio)
        self.st = _restore(resume_dir, model=model, optimizer=self.optimizer, scheduler=self.scheduler, n=n,
                           total=total, env=env)
        if not env.sharded:
            model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.model = model
        self.device = self.accelerator.device
        self.stream = EpochSampler(n, cfg.seed, "sft/data", what="SFT examples")
        self.stream.load({"epoch": self.st.epoch, "cursor": self.st.pos})
        self.budget = TimeBudget(cfg.max_minutes, already_spent_s=self.st.spent_before)
        self.bar = _Progress(total, self.st.step, progress if env.is_main else False, quiet=not env.is_main)
        self.history: list[dict[str, float]] = []
        self.window: list[tuple[float, int, int]] = []  # (loss, samples, tokens) per step since the last log
        self.window_t = self.run_t0 = time.monotonic()
        self.final_loss: float | None = None
        self.last_loss: float | None = None

    def step(self, step: int) -> dict[str, float]:
        cfg, st, env = self.cfg, self.st, self.env
        # this rank's rows of each micro-batch (every row of it in a single process), in runs of similar length
        batches = [b for _ in range(cfg.grad_accum) for b in self.collate.length_groups(
            dist_.shard_slice([self.examples[i] for i in self.stream.take(cfg.batch_size)], env), cfg.length_groups)]
        lr_now = self.scheduler.get_last_lr()[0]
        loss_sum, n_lab, step_tokens = _accumulate(self.model, self.accelerator, batches, self.device, env)
        grad_norm = clip_gradients(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.samples_seen += cfg.batch_size * cfg.grad_accum
        st.tokens_seen += step_tokens
        st.label_tokens += n_lab
        self.last_loss = last_loss = loss_sum / max(1, n_lab) if n_lab else float("nan")
        if not math.isfinite(last_loss) and n_lab:
            raise RuntimeError(f"SFT loss is {last_loss} at step {st.step}; lower the lr or check the data")
        self.window.append((last_loss, cfg.batch_size * cfg.grad_accum, step_tokens))
        self.bar.update(st.step, f"loss {last_loss:.4f}")
        return {"loss": last_loss, "lr": lr_now, "grad_norm": grad_norm}

    def record(self, done: int, metrics: dict[str, float]) -> dict[str, float]:
        """The logged values of the steps since the last log (mean loss, throughput, lr, grad norm, epoch)."""
        st = self.st
        rec = _window_record(self.window, time.monotonic() - self.window_t, lr=metrics["lr"],
                             grad_norm=metrics["grad_norm"], epoch=st.samples_seen / self.n)
        self.final_loss = rec["loss"] if math.isfinite(rec["loss"]) else None
        self.history.append({"step": st.step, **rec})
        rate = (st.step - (st.resumed_from or 0)) / max(1e-9, time.monotonic() - self.run_t0)
        self.bar.line(_log_line(st.step, self.total, rec, elapsed=self.budget.elapsed(), rate=rate))
        self.window, self.window_t = [], time.monotonic()
        return rec

    def save(self, steps_done: int) -> None:
        if self.resume_dir is not None:
            save_resume(self.resume_dir, model=self.accelerator.unwrap_model(self.model), optimizer=self.optimizer,
                        scheduler=self.scheduler, meta=self.state_meta(), env=self.env)

    def state_meta(self) -> dict[str, Any]:
        st = self.st
        return {"step": st.step, "epoch": self.stream.epoch, "pos": self.stream.cursor, "samples_seen": st.samples_seen,
                "tokens_seen": st.tokens_seen, "label_tokens_seen": st.label_tokens, "train_s": self.budget.elapsed(),
                "n_examples": self.n, "total_steps": self.total, "seed": self.cfg.seed}


def train_sft(
    model: torch.nn.Module,
    processor: Any,
    examples: Sequence[Any],
    cfg: SFTConfig,
    *,
    resume_dir: str | Path | None = None,
    log_metrics: Callable[[int, dict[str, float]], None] | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    stop_after_step: int | None = None,
    heartbeat: Callable[[], None] | None = None,
    progress: bool | None = None,
    env: dist_.DistEnv | None = None,
) -> SFTResult:
    """Train ``model`` in place on ``examples`` (SFTExample-like rows) with the settings of ``cfg``.

    ``resume_dir``: where the resumable state lives (saved every ``cfg.save_every`` steps, loaded on
    start when present; None disables both). ``log_metrics(step, values)`` gets loss, lr, grad_norm,
    tokens_per_s, samples_per_s, epoch every ``cfg.log_every`` steps. ``on_step(step, values)`` runs
    after every optimizer step (and after any checkpoint of that step); raising from it aborts the run
    like a crash. ``stop_after_step=k`` raises :class:`TrainingInterrupted` after step k.
    ``progress``: rich bar on/off (None = only on a TTY). ``env``: the stage run's distributed env
    (:func:`~prism_lab.trainers.recipe.start_run`; None: started here). The loop around the steps (time budget
    decided on rank 0, logging, heartbeat, saves) is :func:`~prism_lab.trainers.recipe.run_steps`.
    """
    t_start = time.monotonic()
    env = env if env is not None else start_run(cfg.resources)
    run = _SFTRun(model, processor, examples, cfg, env=env, resume_dir=resume_dir, progress=progress)
    st, total, n = run.st, run.total, run.n
    run.bar.line(f"[sft] {n} examples, {total} steps (warmup {run.warmup}), batch {cfg.batch_size} x accum "
                 f"{cfg.grad_accum} in {cfg.length_groups} length group{'s' if cfg.length_groups > 1 else ''}, "
                 f"lr {cfg.lr:g}, device {run.device}, mixed precision {run.mp}, threads {run.threads}")
    run_samples0, run_tokens0 = st.samples_seen, st.tokens_seen

    def after_step(done: int, metrics: dict[str, float]) -> None:
        if on_step is not None:
            on_step(done, metrics)
        if stop_after_step is not None and stop_after_step <= done < total:
            raise TrainingInterrupted(f"stopped after step {done} (stop_after_step)")

    plan = StepPlan(total=total, start=st.step, log_every=cfg.log_every, save_every=cfg.save_every,
                    budget=run.budget)
    try:
        loop = run_steps(run, plan, env, log=log_metrics, heartbeat=heartbeat, after_step=after_step)
    finally:
        run.bar.close()
    if loop.stopped_by == "time":
        stopped_by = "time"
        run.bar.line(f"[sft] time budget of {cfg.max_minutes:g} min spent at step {st.step}/{total}; stopping")
    else:
        stopped_by = "max_steps" if cfg.max_steps and total == cfg.max_steps else "epochs"
    final_loss = run.final_loss
    if final_loss is None and run.window:
        rec = _window_record(run.window, 1.0, lr=0.0, grad_norm=0.0, epoch=0.0)
        final_loss = rec["loss"] if math.isfinite(rec["loss"]) else None
    run.accelerator.unwrap_model(run.model).eval()
    run_dt = max(1e-9, time.monotonic() - run.run_t0)
    result = SFTResult(
        steps=st.step, total_steps=total, final_loss=final_loss, last_step_loss=run.last_loss,
        samples_seen=st.samples_seen, tokens_seen=st.tokens_seen, label_tokens_seen=st.label_tokens,
        epochs_done=st.samples_seen / n, wall_s=time.monotonic() - t_start, train_s=run.budget.elapsed(),
        samples_per_s=(st.samples_seen - run_samples0) / run_dt, tokens_per_s=(st.tokens_seen - run_tokens0) / run_dt,
        stopped_by=stopped_by, resumed_from_step=st.resumed_from, warmup_steps=run.warmup, mixed_precision=run.mp,
        device=str(run.device), threads=run.threads, history=run.history,
    )
    run.bar.line(f"[sft] finished: {st.step}/{total} steps, loss "
                 f"{final_loss if final_loss is not None else float('nan'):.4f}, "
                 f"stopped by {stopped_by}, {result.samples_per_s:.1f} samples/s")
    return result
