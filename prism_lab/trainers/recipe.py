"""The skeleton every stage trainer runs through (in the spirit of a torchtune recipe).

A stage trainer (SFT, base, discriminator warmup, alignment, RL) supplies what is its own: it builds its models,
optimizers and data in its setup, and gives :func:`run_steps` an object with

* ``step(step) -> metrics``: one optimizer step (``step`` is the 0-based index, the number of steps done before);
* ``save(steps_done)``: write its resumable state (through :mod:`prism_lab.trainers.checkpoint`);
* optionally ``record(steps_done, metrics) -> metrics``: what a logging step logs (default: the step's metrics).

Everything around them is here, once:

* :func:`start_run`: the distributed start-up of a stage run, called once per run (by the stage runner, which
  hands the :class:`~prism_lab.trainers.distributed.DistEnv` to its trainer; a trainer called directly starts it
  itself). The process group has a CPU backend beside NCCL on GPUs (``cpu:gloo,cuda:nccl``), gloo on CPU;
* :func:`time_is_up`: the time budget, decided by rank 0's clock and broadcast, so every rank stops at the same
  step (a rank that stopped alone would wait forever in the next collective);
* :func:`run_steps`: the step budget, the logging cadence (``log_every`` and the last step) into the stage's
  metrics callback (a :class:`~prism_lab.trainers.progress.StepProgress` prints step/total, key metrics, elapsed
  and ETA lines from it, and the callback forwards every value to the ledger and W&B), the heartbeat, the save
  cadence (every ``save_every`` steps before the end of the schedule) and the save of the progress when a budget
  stops the run early.

The precision policy is :mod:`prism_lab.trainers.precision`, gradient clipping :mod:`prism_lab.trainers.optim`,
progress lines :mod:`prism_lab.trainers.progress`, and the final gathered HF save
:func:`prism_lab.trainers.checkpoint.save_final`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from prism_lab.trainers import distributed as dist_
from prism_lab.trainers.common import TimeBudget

__all__ = ["LoopResult", "StepPlan", "StepTrainer", "run_steps", "start_run", "time_is_up"]

#: The longest wait between two heartbeats while steps are running (seconds).
HEARTBEAT_EVERY_S = 10.0


def start_run(resources: Any = None) -> dist_.DistEnv:
    """The distributed start-up of a stage run: join torchrun's process group (one process: nothing to join)
    and return this rank's env. ``resources``: the stage config's ResourcesConfig (its ``processes`` must
    match torchrun's world size), or None."""
    return dist_.init_distributed(getattr(resources, "processes", None) if resources is not None else None)


def time_is_up(budget: TimeBudget | None, env: dist_.DistEnv) -> bool:
    """True when the wall-clock budget is spent, by rank 0's clock, on every rank (collective when sharded and a
    budget is set; every rank has the same config, so they all take part or none does)."""
    if budget is None or budget.max_minutes is None:
        return False
    return bool(dist_.broadcast_object(budget.spent() if env.is_main else None, env))


class StepTrainer(Protocol):
    """What a stage trainer gives :func:`run_steps`."""

    def step(self, step: int) -> dict[str, float]: ...

    def save(self, steps_done: int) -> None: ...


@dataclass
class StepPlan:
    """How many steps to run and when to log and save.

    ``total``: the step this attempt stops at (a ``max_steps`` cap included); ``start``: the steps done before it
    (a resumed run). ``save_every`` 0: never; saves happen at multiples of it strictly before ``schedule_end``
    (the end of the schedule; default ``total``), since the stage writes the final weights itself.
    ``save_on_stop``: when the run stops before ``schedule_end`` (time budget, ``max_steps``), save its progress."""

    total: int
    start: int = 0
    log_every: int = 1
    save_every: int = 0
    schedule_end: int | None = None
    budget: TimeBudget | None = None
    save_on_stop: bool = False

    @property
    def end(self) -> int:
        return self.total if self.schedule_end is None else self.schedule_end


@dataclass
class LoopResult:
    steps_done: int
    stopped_by: str  # "steps" (the plan ran to its total) or "time" (the budget stopped it)
    logged: list[tuple[int, dict[str, float]]] = field(default_factory=list, repr=False)


def run_steps(trainer: StepTrainer, plan: StepPlan, env: dist_.DistEnv, *,
              log: Callable[[int, dict[str, float]], None] | None = None,
              heartbeat: Callable[[], None] | None = None,
              after_step: Callable[[int, dict[str, float]], None] | None = None) -> LoopResult:
    """Run ``trainer.step`` from ``plan.start`` to ``plan.total``; see the module docstring for what it owns.

    ``log(steps_done, values)`` gets the logged steps; ``after_step(steps_done, metrics)`` runs after every step
    (and after its save); raising from it aborts the run like a crash."""
    record = getattr(trainer, "record", None)
    if log is not None and hasattr(log, "set_total") and getattr(log, "total", None) is None:
        log.set_total(plan.total)  # progress lines made before the stage knew the total: step/total and ETA
    done, saved_at, stopped_by = plan.start, plan.start, "steps"
    logged: list[tuple[int, dict[str, float]]] = []
    last_beat = time.monotonic()
    for step in range(plan.start, plan.total):
        if time_is_up(plan.budget, env):
            stopped_by = "time"
            break
        metrics = trainer.step(step)
        done = step + 1
        due = done % plan.log_every == 0 or done == plan.total
        if due:
            values = record(done, metrics) if record is not None else metrics
            logged.append((done, values))
            if log is not None:
                log(done, values)
        if heartbeat is not None and (due or time.monotonic() - last_beat >= HEARTBEAT_EVERY_S):
            heartbeat()
            last_beat = time.monotonic()
        if plan.save_every > 0 and done % plan.save_every == 0 and done < plan.end:
            trainer.save(done)
            saved_at = done
        if after_step is not None:
            after_step(done, metrics)
    if plan.save_on_stop and plan.start < done < plan.end and saved_at != done:
        trainer.save(done)  # stopped by the time budget or max_steps: keep the progress
    return LoopResult(done, stopped_by, logged)
