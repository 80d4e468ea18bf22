"""Small helpers shared by every trainer: LR schedule, seeding, threads, time budget, resumable state.

Resumable state layout (one directory, replaced atomically on every save)::

    <dir>/model.safetensors   weights of the trained module (safetensors; shared tensors handled)
    <dir>/optimizer.pt        optimizer.state_dict()          (torch.save of plain tensors/numbers)
    <dir>/trainer_state.pt    scheduler state, RNG states, and the trainer's own ``meta`` dict
    <dir>/meta.json           the same ``meta`` as JSON, for people and tools

Only files this module wrote are read back, and always with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from prism_lab.errors import CheckpointError

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"

#: The subdirectory of a run's out_dir where every trainer keeps its resumable state.
RESUME_DIR = "resume"


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


# ------------------------------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states, as plain tensors/numbers (weights_only-safe)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError) as exc:  # a different number of GPUs than when it was saved
            log.warning("could not restore CUDA RNG state (%s)", exc)


# ------------------------------------------------------------------------------------------ resumable state
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def save_resume_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    meta: dict[str, Any],
) -> Path:
    """Write model, optimizer, scheduler, RNG states and ``meta`` to ``directory`` atomically.

    The files go to a sibling temp directory first, which then replaces ``directory`` by renames, so a
    crash at any point leaves either the old or the new state (``load_resume_state`` also finds the old
    one under ``<name>.old`` if the crash hit between the two renames).
    """
    from safetensors.torch import save_model

    d = Path(directory)
    tmp = fresh_temp_dir(d)
    save_model(_unwrap(model), str(tmp / MODEL_FILE))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    torch.save({"scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rng_state(),
                "meta": meta}, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return swap_into_place(tmp, d)


def fresh_temp_dir(target: Path) -> Path:
    """An empty sibling temp directory to build ``target`` in (see :func:`swap_into_place`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def swap_into_place(tmp: Path, target: Path) -> Path:
    """Replace ``target`` with the finished ``tmp`` by renames. A crash at any point leaves the old or the
    new directory, the old one possibly under ``<target>.old`` (:func:`resume_candidates` looks there)."""
    old = target.parent / f"{target.name}.old"
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return target


def resume_candidates(directory: str | Path) -> tuple[Path, Path]:
    """Where a state written by :func:`swap_into_place` may be: the directory, then its ``.old`` twin."""
    d = Path(directory)
    return d, d.parent / f"{d.name}.old"


def find_resume_state(directory: str | Path) -> Path | None:
    """The complete resumable state at ``directory`` (or its ``.old`` twin), or None."""
    for cand in resume_candidates(directory):
        if (cand / STATE_FILE).is_file() and (cand / MODEL_FILE).is_file():
            return cand
    return None


def load_resume_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    restore_rng: bool = True,
) -> dict[str, Any] | None:
    """Restore what :func:`save_resume_state` wrote; returns its ``meta`` (None when there is no state)."""
    from safetensors.torch import load_model

    d = find_resume_state(directory)
    if d is None:
        return None
    try:
        missing, unexpected = load_model(_unwrap(model), str(d / MODEL_FILE), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{d / MODEL_FILE}: does not match the model (missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}); delete {d} to start over")
        state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        if optimizer is not None:
            if not (d / OPTIMIZER_FILE).is_file():
                raise CheckpointError(f"{d}: no {OPTIMIZER_FILE}; delete {d} to start over")
            optimizer.load_state_dict(torch.load(d / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{d}: could not restore the resumable state ({type(exc).__name__}: {exc}); "
                              f"delete {d} to start over") from None
    if restore_rng:
        set_rng_state(state["rng"])
    return dict(state["meta"])


def remove_resume_state(directory: str | Path) -> None:
    """Delete a resumable state and its ``.old`` twin (the stage finished)."""
    for cand in resume_candidates(directory):
        if cand.exists():
            shutil.rmtree(cand, ignore_errors=True)


# ------------------------------------------------------------------------------------------ misc
def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


StepCallback = Callable[[int, dict[str, float]], None]
