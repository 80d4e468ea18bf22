"""Load a grid file and plan it: the two entry points every command uses.

``load_grid`` parses and inherits the YAML (grid.py), validates the spec, then lets the grid's pipeline
check what it needs (axes, presets, stage configs). ``build_plan`` expands the cells and asks the
pipeline for each cell's chain of stage runs (plan.py). Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from prism_lab.errors import ConfigError
from prism_lab.harness.grid import (
    SAFE_NAME,
    SAFE_NAME_RULE,
    Grid,
    GridSpec,
    check_axes,
    load_raw,
    validation_error,
)
from prism_lab.harness.pipeline import get_pipeline
from prism_lab.harness.plan import Plan, PlanBuilder, expand_cells
from prism_lab.harness.plugins import load_plugins


def load_grid(path: str | Path) -> Grid:
    """Load, inherit, validate. Pipeline-specific checks (axes, presets, stages) run here too."""
    load_plugins()
    path = Path(path)
    raw, lines = load_raw(path, ())
    if "name" in raw and lines.get(("name",), (str(path), 0))[0] != str(path):
        del raw["name"]  # a sweep's name is its own file's: a grid that extends another never takes over its sweep
    try:
        spec = GridSpec.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, lines, str(path)) from None
    if not spec.name:
        if not SAFE_NAME.fullmatch(path.stem):
            raise ConfigError(f"{path}: name: the file name {path.stem!r} is not a safe sweep name ({SAFE_NAME_RULE}); "
                              "set `name:` in the grid")
        spec.name = path.stem
    grid = Grid(spec=spec, path=path, lines=lines)
    check_axes(grid)
    try:
        pipeline = get_pipeline(spec.pipeline)
    except KeyError as exc:
        raise grid.error(("pipeline",), str(exc.args[0])) from None
    pipeline.validate(grid)
    return grid


def build_plan(grid: Grid) -> Plan:
    pipeline = get_pipeline(grid.spec.pipeline)
    builder = PlanBuilder(grid)
    cells = expand_cells(grid)
    for cell in cells:
        pipeline.expand(grid, cell, builder)
    return Plan(grid=grid, cells=cells, runs=builder.runs)


def check_inputs(grid: Grid, *, strict_benchmarks: bool = True) -> list[str]:
    """Check the grid's files on disk (datasets, checkpoints) before any stage runs: `sweep plan` and
    `sweep run` both call this. A pipeline without such inputs has nothing to check. Returns warnings
    (one line each); ``strict_benchmarks`` False turns a missing official/hub benchmark file into one."""
    check = getattr(get_pipeline(grid.spec.pipeline), "check_inputs", None)
    if check is None:
        return []
    return list(check(grid, strict_benchmarks=strict_benchmarks) or [])
