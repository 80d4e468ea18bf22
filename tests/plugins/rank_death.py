"""Test-only stage kind and pipeline (PRISM_LAB_PLUGINS=tests.plugins.rank_death): a torchrun rank that dies.

Each cell of axis `x` is one `test_rank_death` run. With `x: die` the run has 2 processes under torchrun:
both join a gloo process group, rank 1 writes gloo-like text full of square brackets to stderr and
SIGKILLs itself, and rank 0's next collective (waiting on rank 1) fails with gloo's own error (whose text names source files
in brackets, e.g. ``[/__w/pytorch/pytorch/third_party/gloo/...]``). Any other value is a bystander: one
process that waits until the victim has died, then finishes, so it is still running when the death is
reported.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from prism_lab.config.base import StrictModel
from prism_lab.config.resources import ResourcesConfig
from prism_lab.harness.grid import Grid
from prism_lab.harness.pipeline import PIPELINES
from prism_lab.harness.plan import Cell, PlanBuilder
from prism_lab.harness.stage_kinds import STAGE_KINDS, StageKind, register_stage_kind

#: What the dying rank writes to stderr: Rich would read `[/__w/...]` as a closing tag.
GLOO_TEXT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:534] "
             "Connection closed by peer [127.0.0.1]:29500 [bold]")


class DeathConfig(StrictModel):
    value: Any = Field(None, description="Axis value: `die` makes the victim, anything else a bystander.")
    marker: str = Field("", description="File the victim's rank 1 writes just before it dies.")
    seed: int = 0
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Where the run goes.")


def _victim(cfg: DeathConfig) -> dict:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)  # both ranks are up
    if dist.get_rank() == 1:
        print(GLOO_TEXT, file=sys.stderr, flush=True)
        Path(cfg.marker).write_text("died")
        os.kill(os.getpid(), signal.SIGKILL)
    # torchrun SIGTERMs the surviving ranks when one dies; rank 0 holds out so that its own gloo error is
    # always what gets reported (in real runs the two race, and the issue saw the gloo text win)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    dist.all_reduce(t)  # blocks on rank 1, which dies: gloo raises "Connection closed by peer"
    raise RuntimeError(f"rank 1 should have died; {GLOO_TEXT}")


def run_death(ctx) -> dict:
    cfg = ctx.config
    if cfg.value == "die":
        return _victim(cfg)
    deadline = time.time() + 120
    while not Path(cfg.marker).exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # still running while the driver handles the death
    (ctx.out_dir / "out.txt").write_text(str(cfg.value))
    return {"value": cfg.value}


class DeathPipeline:
    name = "test-rank-death"

    def validate(self, grid: Grid) -> None:
        pass

    def expand(self, grid: Grid, cell: Cell, builder: PlanBuilder) -> None:
        v = cell.axes.get("x")
        cfg = {**grid.spec.stages.get("step", {}), "value": v}
        if v == "die":
            cfg["resources"] = {"processes": 2}
        builder.add("test_rank_death", cfg, {}, label=f"step x={v}", cell=cell, role="step",
                    where=("stages", "step"))


if "test_rank_death" not in STAGE_KINDS:
    register_stage_kind(StageKind("test_rank_death", "tests.plugins.rank_death:DeathConfig",
                                  "tests.plugins.rank_death:run_death", "test-only: a torchrun rank dies"))
if "test-rank-death" not in PIPELINES:
    PIPELINES.add("test-rank-death", DeathPipeline())
