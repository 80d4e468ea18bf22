"""Test-only pipeline for `prism-lab tune` (loaded through PRISM_LAB_PLUGINS=tests.plugins.tune_chain).

    tune_shared (role `shared`, identical in every trial: must run once per study)
      -> tune_trial (role `trial`, config x, y, n, mode: the tuned fields; logs a per-step `proxy`)
        -> tune_eval (role `eval/trial`: logs `eval/avg/accuracy` = 1 - (x-0.3)^2 - (y-0.5)^2 and `length`)

Every stage appends one line to its `counter` file. `tune_trial` waits while `hold_file` exists (so a
test can SIGKILL the tuner mid-trial) and fails while `fail_if_exists` exists.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from prism_lab.config.base import StrictModel
from prism_lab.harness.grid import Grid
from prism_lab.harness.pipeline import PIPELINES
from prism_lab.harness.plan import Cell, PlanBuilder
from prism_lab.harness.stage_kinds import STAGE_KINDS, StageKind, register_stage_kind


class SharedConfig(StrictModel):
    counter: str = Field("", description="File that gets one line per execution.")
    seed: int = 0


class TrialConfig(StrictModel):
    x: float = Field(0.5, ge=0, le=1, description="Tuned.")
    y: float = Field(0.5, ge=0, le=1, description="Tuned.")
    n: int = Field(2, ge=1, le=10, description="Tuned (int).")
    mode: str = Field("a", description="Tuned (categorical).")
    steps: int = Field(3, ge=1, description="Logged steps of `proxy`.")
    counter: str = ""
    hold_file: str = ""
    fail_if_exists: str = ""
    seed: int = 0


class EvalConfig(StrictModel):
    counter: str = ""
    seed: int = 0


def _count(path: str, line: str) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def objective(x: float, y: float) -> float:
    return 1.0 - (x - 0.3) ** 2 - (y - 0.5) ** 2


def run_shared(ctx) -> dict:
    _count(ctx.config.counter, "shared")
    (ctx.out_dir / "out.txt").write_text("shared")
    ctx.log_metrics(0, {"done": 1.0})
    return {}


def run_trial(ctx) -> dict:
    cfg = ctx.config
    _count(cfg.counter, f"trial x={cfg.x!r} y={cfg.y!r} n={cfg.n} mode={cfg.mode}")
    if cfg.hold_file:
        Path(cfg.hold_file + ".reached").write_text(ctx.key)
        while Path(cfg.hold_file).exists():
            time.sleep(0.05)
    if cfg.fail_if_exists and Path(cfg.fail_if_exists).exists():
        raise RuntimeError("tune_trial told to fail")
    target = objective(cfg.x, cfg.y)
    for step in range(cfg.steps):
        ctx.log_metrics(step, {"proxy": target * (step + 1) / cfg.steps})
    (ctx.out_dir / "out.txt").write_text(f"{cfg.x} {cfg.y}")
    return {"target": target}


def run_eval(ctx) -> dict:
    cfg = ctx.input("policy").config
    _count(ctx.config.counter, "eval")
    acc = objective(cfg["x"], cfg["y"])
    ctx.log_metrics(0, {"eval/avg/accuracy": acc, "length": 100.0 + 50.0 * cfg["x"]})
    (ctx.out_dir / "out.txt").write_text(str(acc))
    return {"accuracy": acc}


class TuneChainPipeline:
    name = "test-tune"

    def validate(self, grid: Grid) -> None:
        for kind in ("tune_shared", "tune_trial", "tune_eval"):
            if kind not in grid.spec.stages:
                raise grid.error(("stages",), f"missing stage {kind!r}")
        from prism_lab.harness.grid import validate_config

        for kind in ("tune_shared", "tune_trial", "tune_eval"):
            validate_config(grid, STAGE_KINDS.get(kind).config_model(), grid.spec.stages[kind], ("stages", kind))

    def expand(self, grid: Grid, cell: Cell, builder: PlanBuilder) -> None:
        st = grid.spec.stages
        seed = cell.axes.get("seed", 0)
        a = builder.add("tune_shared", {**st["tune_shared"], "seed": seed}, {}, label="shared", cell=cell,
                        role="shared", where=("stages", "tune_shared"))
        cfg = st["tune_trial"]
        b = builder.add("tune_trial", {**cfg, "seed": seed}, {"prev": a},
                        label=f"trial x={cfg.get('x')} y={cfg.get('y')}", cell=cell, role="trial",
                        where=("stages", "tune_trial"))
        builder.add("tune_eval", {**st["tune_eval"], "seed": seed}, {"policy": b}, label="eval", cell=cell,
                    role="eval/trial", where=("stages", "tune_eval"))


for _kind in (
    StageKind("tune_shared", "tests.plugins.tune_chain:SharedConfig", "tests.plugins.tune_chain:run_shared", "test"),
    StageKind("tune_trial", "tests.plugins.tune_chain:TrialConfig", "tests.plugins.tune_chain:run_trial", "test"),
    StageKind("tune_eval", "tests.plugins.tune_chain:EvalConfig", "tests.plugins.tune_chain:run_eval", "test"),
):
    if _kind.name not in STAGE_KINDS:
        register_stage_kind(_kind)
if "test-tune" not in PIPELINES:
    PIPELINES.add("test-tune", TuneChainPipeline())
