"""Grid files (experiments/*.yaml): typed spec, `extends:` inheritance, and located errors.

Every error is a ConfigError with one line: ``file:line: field.path: what was expected``.
"""

from __future__ import annotations

import copy
import re
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from prism_lab.config.base import StrictModel
from prism_lab.errors import ConfigError
from prism_lab.harness.yamlio import LineMap, dotted, load_yaml, locate

#: The axes every PRISM grid has; any other axis is a dotted config path such as `align.caption_weight`.
CORE_AXES = ("size", "algorithm", "alignment", "seed")


class ReportSpec(StrictModel):
    """Which cells a report compares: `treatment` vs `baseline` values of `compare_axis`."""

    compare_axis: str = Field("alignment", description="Axis whose values are compared.")
    baseline: Any = Field("none", description="Baseline value of the compared axis (SFT -> RLVR).")
    treatment: Any = Field("prism", description="Treatment value (SFT -> PRISM -> RLVR).")
    significance: str = Field(
        "paired_t", description="Test over seeds for each delta: `paired_t` (t-interval) or `bootstrap`."
    )


#: What a sweep name may be: it becomes a directory name (reports/<name>), so no `/`, no `..`.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
SAFE_NAME_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, at most 128"


class GridSpec(StrictModel):
    """A sweep: axes (cartesian product = cells), per-stage configs, model map, benchmarks, report."""

    name: str = Field("", description="Sweep name (defaults to the file's name; never inherited through "
                      "`extends:`). Letters, digits, `_`, `.`, `-`, starting with a letter or digit: it names "
                      "report directories.")
    description: str = Field("", description="Free text shown in reports.")
    pipeline: str = Field("prism", description="Stage chain to expand each cell into.")
    axes: dict[str, list[Any]] = Field(description="Axis name -> values. Cells are their product.")
    models: dict[str, str] = Field(
        default_factory=dict, description="`size` axis value -> model preset, local path or hub id."
    )
    data: dict[str, Any] = Field(default_factory=dict, description="Config of the `data` stage.")
    stages: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Stage kind -> config (unset fields take the paper defaults)."
    )
    size_stages: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict,
        description="size (a key of `models`) -> stage kind -> fields that replace those of `stages` in that size's cells "
        "(the paper tunes its 4B and 8B runs apart). Merged over `stages` field by field; an axis on the same "
        "field still wins.",
    )
    benchmarks: list[str] = Field(default_factory=list, description="Benchmarks every checkpoint is evaluated on.")
    seed_scope: list[str] = Field(
        default_factory=lambda: ["sft", "disc_warmup", "align", "rl", "eval"],
        description="Stage kinds whose `seed` is set from the `seed` axis.",
    )
    report: ReportSpec = Field(default_factory=ReportSpec, description="Report comparison.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.fullmatch(value):
            raise ValueError(f"expected a safe file name ({SAFE_NAME_RULE}), got {value!r}")
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _none_stage_is_empty(cls, value: Any) -> Any:
        # `sft:` with nothing under it means "all defaults"
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @field_validator("size_stages", mode="before")
    @classmethod
    def _none_size_is_empty(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {size: ({} if kinds is None else cls._none_stage_is_empty(kinds)) for size, kinds in value.items()}
        return value

    def stage_section(self, kind: str, size: str) -> dict[str, Any]:
        """The config a stage of ``kind`` gets in a cell of ``size``: `stages` with that size's `size_stages` over
        it, as a deep copy that shares nothing with the spec (the pipeline sets axis values into it)."""
        section = self.data if kind == "data" else self.stages.get(kind, {})
        over = self.size_stages.get(size, {}).get(kind)
        return copy.deepcopy(_deep_merge(section, over) if over else section)


@dataclass
class Grid:
    """A loaded grid: the validated spec, its file, and where each field was written."""

    spec: GridSpec
    path: Path
    lines: LineMap = field(default_factory=dict)

    def error(self, path: tuple, message: str) -> ConfigError:
        """A ConfigError located at ``path`` (a tuple of keys and indices)."""
        return ConfigError(f"{locate(self.lines, path, str(self.path))}: {dotted(path)}: {message}")

    @property
    def name(self) -> str:
        return self.spec.name


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_raw(path: Path, stack: tuple[Path, ...]) -> tuple[dict, LineMap]:
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: (top level): expected a mapping of grid fields, got {type(data).__name__}")
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, lines
    where = locate(lines, ("extends",), str(path))
    if not isinstance(parent_ref, str) or not parent_ref:
        raise ConfigError(f"{where}: extends: expected a path to another grid file")
    parent = (path.parent / parent_ref).resolve()
    if parent in stack or parent == path.resolve():
        chain = " -> ".join(str(p) for p in (*stack, path.resolve(), parent))
        raise ConfigError(f"{where}: extends: cyclic inheritance ({chain})")
    if not parent.is_file():
        raise ConfigError(f"{where}: extends: file not found: {parent}")
    base, base_lines = load_raw(parent, (*stack, path.resolve()))
    merged_lines = dict(base_lines)
    merged_lines.update(lines)
    return _deep_merge(base, data), merged_lines


def validation_error(exc: ValidationError, lines: LineMap, fname: str, prefix: tuple = ()) -> ConfigError:
    errors = exc.errors()
    first = errors[0]
    loc = prefix + tuple(p for p in first["loc"] if p != "__root__")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    elif first["type"] == "missing":
        msg = "field required"
    got = first.get("input")
    if first["type"] not in ("missing", "extra_forbidden") and not isinstance(got, (dict, list)) and "got " not in msg:
        msg += f" (got {got!r})"
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return ConfigError(f"{locate(lines, loc, fname)}: {dotted(loc)}: {msg}{more}")


#: Most cells a grid may have (the product of its axis lengths), unless $PRISM_LAB_MAX_CELLS says more.
#: The toy grid has 12; 10,000 cells is already days of compute for the smallest real model.
MAX_CELLS = 10_000


def max_cells() -> int:
    raw = os.environ.get("PRISM_LAB_MAX_CELLS", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else MAX_CELLS


def check_axes(grid: Grid) -> None:
    if not grid.spec.axes:
        raise grid.error(("axes",), "expected at least one axis")
    cells = 1
    for name, values in grid.spec.axes.items():
        if not values:
            raise grid.error(("axes", name), "expected a non-empty list of values, got []")
        cells *= len(values)
    if cells > max_cells():
        sizes = " x ".join(str(len(v)) for v in grid.spec.axes.values())
        raise grid.error(("axes",), f"{sizes} = {cells:,} cells, more than the limit of {max_cells():,} (split the "
                                    "grid, or raise $PRISM_LAB_MAX_CELLS)")
    for name, values in grid.spec.axes.items():
        seen: dict[str, int] = {}
        for i, v in enumerate(values):
            token = json.dumps(v, sort_keys=True, default=repr)
            if token in seen:
                raise grid.error(("axes", name, i), f"duplicate value {v!r} in axis {name!r}")
            seen[token] = i


def validate_config(grid: Grid, model: type, raw: dict, path: tuple) -> Any:
    """Validate one stage config; errors are located at ``path`` inside the grid file."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, grid.lines, str(grid.path), path) from None
