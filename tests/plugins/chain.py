"""Test-only stage kind and pipeline (loaded through PRISM_LAB_PLUGINS=tests.plugins.chain).

`test_step` appends its label to a counter file, optionally waits while a hold file exists (so a test
can kill the executor mid-stage; with `sleeper`, a child process of its own sleeps meanwhile), optionally
fails, and writes one artifact file.
"""

from __future__ import annotations

import os
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


class StepConfig(StrictModel):
    name: str = Field("step", description="Step name.")
    counter: str = Field("", description="File that gets one line per execution.")
    hold_file: str = Field("", description="While this file exists the step waits.")
    fail_if_exists: str = Field("", description="Fail when this file exists.")
    sleeper: bool = Field(False, description="While holding, keep a child process asleep in a session of its own "
                          "(a process that detached, out of reach of any process-group kill).")
    value: Any = Field(None, description="Axis value (changes the key).")
    seed: int = 0
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Where the step runs.")


def _record_placement(cfg: StepConfig) -> None:
    """With non-default resources: one line per rank (name, value, rank, world size, visible GPUs,
    start and end time, then the values of PRISM_JUDGE_URL, LMUData and NCCL_DEBUG, "-" when unset) in
    ``<counter>.placement``, holding the step 0.5 s so overlaps show."""
    t0 = time.time()
    time.sleep(0.5)
    env = os.environ
    line = "\t".join([cfg.name, str(cfg.value), env.get("RANK", "-"), env.get("WORLD_SIZE", "-"),
                      env.get("CUDA_VISIBLE_DEVICES", "<unset>"), f"{t0:.3f}", f"{time.time():.3f}",
                      *(env.get(var, "-") for var in ("PRISM_JUDGE_URL", "LMUData", "NCCL_DEBUG"))])
    with open(cfg.counter + ".placement", "a") as fh:
        fh.write(line + "\n")


def run_step(ctx) -> dict:
    cfg = ctx.config
    if cfg.counter and cfg.resources != ResourcesConfig():
        _record_placement(cfg)
        if os.environ.get("RANK", "0") != "0":
            return {}
    if cfg.counter:
        with open(cfg.counter, "a") as fh:
            fh.write(f"{cfg.name}:{cfg.value}\n")
    if cfg.hold_file:
        if cfg.sleeper:
            import subprocess
            import sys

            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
        marker = Path(cfg.hold_file + ".reached")
        marker.write_text(ctx.key)
        while Path(cfg.hold_file).exists():
            time.sleep(0.05)
    if cfg.fail_if_exists and Path(cfg.fail_if_exists).exists():
        raise RuntimeError(f"step {cfg.name} told to fail")
    (ctx.out_dir / "out.txt").write_text(f"{cfg.name} {cfg.value}")
    ctx.log_metrics(0, {"value_seen": 1.0})
    return {"name": cfg.name}


class ChainPipeline:
    """first (shared) -> middle (per axis value) -> last (per axis value)."""

    name = "test-chain"

    def validate(self, grid: Grid) -> None:
        for kind in ("first", "middle", "last"):
            if kind not in grid.spec.stages:
                raise grid.error(("stages",), f"missing stage {kind!r}")

    def expand(self, grid: Grid, cell: Cell, builder: PlanBuilder) -> None:
        st = grid.spec.stages
        v = cell.axes.get("x")
        a = builder.add("test_step", {**st["first"], "name": "first"}, {}, label="first", cell=cell, role="first",
                        where=("stages", "first"))
        b = builder.add("test_step", {**st["middle"], "name": "middle", "value": v}, {"prev": a},
                        label=f"middle x={v}", cell=cell, role="middle", where=("stages", "middle"))
        builder.add("test_step", {**st["last"], "name": "last", "value": v}, {"prev": b},
                    label=f"last x={v}", cell=cell, role="last", where=("stages", "last"))


if "test_step" not in STAGE_KINDS:
    register_stage_kind(StageKind("test_step", "tests.plugins.chain:StepConfig", "tests.plugins.chain:run_step",
                                  "test-only step"))
if "test-chain" not in PIPELINES:
    PIPELINES.add("test-chain", ChainPipeline())
