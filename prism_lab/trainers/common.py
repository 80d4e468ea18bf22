"""Small helpers shared by every trainer: LR schedule, seeding, threads, time budget, durations.

Checkpoints (the resumable state and the final save) live in :mod:`prism_lab.trainers.checkpoint`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR


# ------------------------------------------------------------------------------------------ schedule
def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    """Warmup length in optimizer steps: ``ceil(warmup_ratio * total_steps)`` (the HF convention)."""
    return int(math.ceil(max(0.0, warmup_ratio) * max(0, total_steps)))


def cosine_with_warmup(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier for the update with 0-based index ``step`` (HF ``get_cosine_schedule_with_warmup``
    convention, plus a floor).

    * linear warmup: ``step / warmup_steps`` for ``step < warmup_steps`` (so update 0 has lr 0);
    * then cosine from 1 down to ``min_lr_ratio``: ``min + (1 - min) * 0.5 * (1 + cos(pi * p))`` with
      ``p = (step - warmup_steps) / max(1, total_steps - warmup_steps)``, clamped to [0, 1]
      (steps past ``total_steps`` stay at the floor).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return float(step) / float(warmup_steps)
    progress = (step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    progress = min(1.0, max(0.0, progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class CosineWithWarmup:
    """Picklable LR lambda (a callable object, so ``LambdaLR.state_dict`` records its parameters)."""

    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        return cosine_with_warmup(step, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                                  min_lr_ratio=self.min_lr_ratio)


def make_cosine_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_ratio: float = 0.0,
                          warmup_steps: int | None = None, min_lr_ratio: float = 0.0) -> LambdaLR:
    """``LambdaLR`` over :func:`cosine_with_warmup`; call ``scheduler.step()`` after each optimizer step."""
    w = warmup_steps if warmup_steps is not None else warmup_steps_for(total_steps, warmup_ratio)
    return LambdaLR(optimizer, CosineWithWarmup(int(total_steps), int(w), float(min_lr_ratio)))


# ------------------------------------------------------------------------------------------ process setup
def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def setup_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads when ``threads`` is given; returns the number in use."""
    if threads:
        torch.set_num_threads(int(threads))
        try:  # only allowed before any inter-op parallel work has started
            torch.set_num_interop_threads(max(1, min(int(threads), 2)))
        except RuntimeError:
            pass
    return torch.get_num_threads()


@dataclass
class TimeBudget:
    """Wall-clock budget that survives restarts: ``already_spent_s`` comes from the resumable state."""

    max_minutes: float | None
    already_spent_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        """Seconds spent in this attempt plus earlier ones."""
        return self.already_spent_s + (time.monotonic() - self.started)

    def remaining(self) -> float:
        if self.max_minutes is None:
            return math.inf
        return self.max_minutes * 60.0 - self.elapsed()

    def spent(self) -> bool:
        return self.remaining() <= 0.0



# ------------------------------------------------------------------------------------------ misc
def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


StepCallback = Callable[[int, dict[str, float]], None]
