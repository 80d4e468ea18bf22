"""The time budget of the recipe loop (trainers/recipe.py) is decided on rank 0 and broadcast.

Two real gloo processes run :func:`run_steps` with a trainer whose step is a collective (as a sharded RL step is:
rollouts gathered, gradients reduced). Only rank 0's clock says the budget is spent, after 3 steps. Every rank
must stop after the same step: a rank that checked its own clock would go on into step 4's collective and wait
for a partner that has left (the hang this guards against; here the group's timeout turns it into an error).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prism_lab.trainers.common import TimeBudget
from prism_lab.trainers.distributed import DistEnv
from prism_lab.trainers.recipe import StepPlan, run_steps

STOP_AFTER = 3
STEPS = 8


class _RankClock(TimeBudget):
    """A 10-minute budget that rank 0 sees spent from the 4th check on; rank 1's clock never runs out."""

    def __init__(self, rank: int) -> None:
        super().__init__(max_minutes=10.0)
        self.rank, self.checks = rank, 0

    def spent(self) -> bool:
        self.checks += 1
        return self.rank == 0 and self.checks > STOP_AFTER


class _CollectiveTrainer:
    def __init__(self) -> None:
        self.saved: list[int] = []

    def step(self, step: int) -> dict[str, float]:
        t = torch.ones(1)
        dist.all_reduce(t)  # every rank must be here for every step
        return {"world": float(t.item())}

    def save(self, steps_done: int) -> None:
        self.saved.append(steps_done)


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    env = DistEnv(rank=rank, world_size=2)
    trainer = _CollectiveTrainer()
    res = run_steps(trainer, StepPlan(total=STEPS, budget=_RankClock(rank), save_on_stop=True), env)
    dist.barrier()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"done": res.steps_done, "stopped_by": res.stopped_by,
                                                         "saved": trainer.saved}))
    dist.destroy_process_group()


def test_every_rank_stops_where_rank_0s_clock_says(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1] == {"done": STOP_AFTER, "stopped_by": "time", "saved": [STOP_AFTER]}
