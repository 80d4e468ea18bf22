"""The checks ``load_space`` makes on a search-space file: the cell fixes every axis, every parameter names
a config field of a stage that runs in the cell and has a valid range, and every role exists."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prism_lab.errors import ConfigError
from prism_lab.harness.grid import Grid
from prism_lab.tune.space_spec import ParamSpec, SearchSpaceSpec

ErrorAt = Callable[[tuple, str], ConfigError]


def walk_fields(model: type[BaseModel], parts: list[str]) -> str | None:
    """None when ``parts`` names a field path of ``model``; else what is wrong."""
    import types
    import typing

    current: Any = model
    for i, part in enumerate(parts):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return f"{'.'.join(parts[:i])!r} is not a section with sub-fields"
        fields = current.model_fields
        if part not in fields:
            known = ", ".join(sorted(fields))
            where = f"{'.'.join(parts[:i])!r} of " if i else ""
            return f"{where}stage config has no field {part!r} (fields: {known})"
        ann = fields[part].annotation
        nxt: Any = ann
        if typing.get_origin(ann) in (typing.Union, types.UnionType):
            models = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
            nxt = models[0] if models else ann
        current = nxt
    return None


def detail(exc: ConfigError) -> str:
    """The message of a located ConfigError without its ``file:line: field:`` prefix."""
    return str(exc).split(": ", 2)[-1]


def resolve_cell(spec: SearchSpaceSpec, base: Grid, base_path: Path, err: ErrorAt) -> dict[str, Any]:
    """The cell: one value per axis of the base grid (an axis with a single value may be left out)."""
    cell: dict[str, Any] = {}
    for axis in spec.cell:
        if axis not in base.spec.axes:
            raise err(("cell", axis), f"unknown axis {axis!r}; axes of {base_path.name}: {', '.join(base.spec.axes)}")
    for axis, values in base.spec.axes.items():
        if axis in spec.cell:
            cell[axis] = spec.cell[axis]
        elif len(values) == 1:
            cell[axis] = values[0]
        else:
            raise err(("cell",), f"axis {axis!r} has {len(values)} values in {base_path.name} ({values}); "
                                 f"choose one, e.g. `{axis}: {values[0]}`")
    return cell


def check_parameters(space: Any, base_path: Path, err: ErrorAt) -> None:
    """Every parameter names a field of a stage that runs in the cell; its bounds or choices plan."""
    from prism_lab.harness.planning import build_plan
    from prism_lab.harness.stage_kinds import STAGE_KINDS

    spec, base, cell = space.spec, space.base, space.cell
    if not spec.parameters:
        raise err(("parameters",), "expected at least one parameter (`<stage>.<field>: {type: float, low: .., high: ..}`)")
    stages = ["data", *base.spec.stages]
    for name, p in spec.parameters.items():
        at = ("parameters", name)
        kind, _, rest = name.partition(".")
        if not rest or not kind:
            raise err(at, f"unknown parameter path {name!r}: expected a config path `<stage>.<field>`, e.g. align.caption_weight")
        if kind not in stages:
            raise err(at, f"unknown parameter path {name!r}: no stage {kind!r} in {base_path.name} "
                          f"(stages: {', '.join(stages)})")
        if kind in STAGE_KINDS:
            problem = walk_fields(STAGE_KINDS.get(kind).config_model(), rest.split("."))
            if problem:
                raise err(at, f"unknown parameter path {name!r}: {problem}")
        if kind not in space.kinds:
            raise err(at, f"stage {kind!r} does not run in the cell "
                          f"({', '.join(f'{k}={v}' for k, v in cell.items())}), so {name!r} would change nothing")
        check_param(p, at, err)
        values = [("choices", i, v) for i, v in enumerate(p.choices)] if p.type == "categorical" else \
            [("low", None, p.low), ("high", None, p.high)]
        for field_name, idx, value in values:
            where = at + ((field_name, idx) if idx is not None else (field_name,))
            try:
                build_plan(space.trial_grid({name: value}, f"{spec.name}-check"))
            except ConfigError as exc:
                raise err(where, f"{value!r} is not a valid value of {name}: {detail(exc)}") from None


def check_roles(space: Any, err: ErrorAt) -> None:
    """Objectives and pruning reports name roles of the cell; pruning has a single objective."""
    spec = space.spec
    for key in ("objective", "second_objective"):
        obj = getattr(spec, key)
        if obj is not None and obj.role not in space.roles:
            raise err((key, "role"), f"unknown objective role {obj.role!r}; roles of this cell: {', '.join(space.roles)}")
    if spec.pruning is not None:
        if spec.second_objective is not None:
            raise err(("pruning",), "pruning works with a single objective only (Optuna pruners are single-objective); "
                                    "remove `pruning` or `second_objective`")
        for i, rep in enumerate(spec.pruning.report):
            if rep.role not in space.roles:
                raise err(("pruning", "report", i, "role"),
                          f"unknown role {rep.role!r}; roles of this cell: {', '.join(space.roles)}")
    return space


def check_param(p: ParamSpec, at: tuple, err: Any) -> None:
    if p.type == "categorical":
        if not p.choices:
            raise err(at + ("choices",) if p.choices is not None else at,
                      "categorical parameter needs a non-empty list of `choices`")
        for i, c in enumerate(p.choices):
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise err(at + ("choices", i), f"choices must be scalars (str, number, bool, null), got {c!r}")
        for f in ("low", "high", "step"):
            if getattr(p, f) is not None:
                raise err(at + (f,), f"`{f}` is for float/int parameters; a categorical parameter takes `choices`")
        if p.log:
            raise err(at + ("log",), "`log` is for float/int parameters")
        return
    if p.choices is not None:
        raise err(at + ("choices",), f"`choices` is for categorical parameters; a {p.type} parameter takes low/high")
    for f in ("low", "high"):
        v = getattr(p, f)
        if v is None:
            raise err(at, f"{p.type} parameter needs `{f}`")
        if isinstance(v, bool) or not math.isfinite(float(v)):
            raise err(at + (f,), f"expected a finite number, got {v!r}")
        if p.type == "int" and float(v) != int(v):
            raise err(at + (f,), f"int parameter needs an integer bound, got {v!r}")
    if p.low > p.high:
        raise err(at + ("low",), f"low ({p.low}) must be <= high ({p.high})")
    if p.log and p.low <= 0:
        raise err(at + ("low",), f"log scale needs bounds > 0, got low={p.low}")
    if p.step is not None:
        if p.step <= 0:
            raise err(at + ("step",), f"step must be > 0, got {p.step}")
        if p.log and (p.type == "float" or p.step != 1):
            raise err(at + ("step",), "`step` cannot be combined with `log: true`")
        if p.type == "int" and float(p.step) != int(p.step):
            raise err(at + ("step",), f"int parameter needs an integer step, got {p.step}")
