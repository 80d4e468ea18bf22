"""A loaded search space (the file format is described in :mod:`prism_lab.tune.space_spec`): the base
grid cell a study starts from, its parameters as Optuna distributions, and the one-cell grid of a trial.
Every problem is a ConfigError of one line naming the file, the line and the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from prism_lab.errors import ConfigError
from prism_lab.harness.grid import Grid, GridSpec, validation_error
from prism_lab.harness.pipeline import set_path
from prism_lab.harness.planning import load_grid
from prism_lab.harness.yamlio import LineMap, dotted, load_yaml, locate
from prism_lab.tune.space_checks import (
    check_parameters,
    check_roles,
    detail,
    resolve_cell,
)
from prism_lab.tune.space_spec import ObjectiveSpec, ReportSpec, SearchSpaceSpec

__all__ = ["SearchSpace", "load_space"]


def _get_path(cfg: Any, parts: list[str]) -> Any:
    node = cfg
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


@dataclass
class SearchSpace:
    """A loaded, validated search space."""

    spec: SearchSpaceSpec
    path: Path
    lines: LineMap
    base: Grid
    cell: dict[str, Any]  # every axis of the base grid -> the fixed value
    roles: list[str] = field(default_factory=list)  # roles of the cell's runs
    kinds: set[str] = field(default_factory=set)  # stage kinds that run in the cell
    _reference_configs: dict[str, dict] = field(default_factory=dict)  # kind -> resolved config (base values)
    reference: Any = None  # the plan of the cell with the base grid's values (no parameter set)

    # ---- basics -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    def error(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(f"{locate(self.lines, path, str(self.path))}: {dotted(path)}: {message}")

    @property
    def objectives(self) -> list[ObjectiveSpec]:
        return [self.spec.objective] + ([self.spec.second_objective] if self.spec.second_objective else [])

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return self.spec.second_objective is not None

    @property
    def reports(self) -> list[ReportSpec]:
        return list(self.spec.pruning.report) if self.spec.pruning else []

    # ---- Optuna -----------------------------------------------------------------------------------
    def distributions(self) -> dict[str, Any]:
        import optuna.distributions as d

        out: dict[str, Any] = {}
        for name, p in self.spec.parameters.items():
            if p.type == "float":
                out[name] = d.FloatDistribution(float(p.low), float(p.high), log=p.log,
                                                step=None if p.step is None else float(p.step))
            elif p.type == "int":
                out[name] = d.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                out[name] = d.CategoricalDistribution(list(p.choices))
        return out

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Ask ``trial`` (an optuna.Trial) for every parameter, in file order."""
        out: dict[str, Any] = {}
        for name, p in self.spec.parameters.items():
            if p.type == "float":
                out[name] = trial.suggest_float(name, float(p.low), float(p.high), log=p.log,
                                                step=None if p.step is None else float(p.step))
            elif p.type == "int":
                out[name] = trial.suggest_int(name, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                out[name] = trial.suggest_categorical(name, list(p.choices))
        return out

    def fingerprint(self) -> str:
        """Hash of what must not change while a study runs: parameters, objectives, base cell."""
        from optuna.distributions import distribution_to_json

        payload = {
            "parameters": {k: distribution_to_json(v) for k, v in self.distributions().items()},
            "objectives": [o.model_dump() for o in self.objectives],
            "cell": self.cell,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def base_fingerprint(self) -> str:
        """Hash of the resolved base grid (its `extends:` merged; name, description and report left out:
        they change no result). A study's scores hold for this grid only; best.yaml extends it."""
        raw = self.base.spec.model_dump(mode="json", exclude_defaults=True)
        for key in ("name", "description", "report"):
            raw.pop(key, None)
        return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def default_params(self) -> tuple[dict[str, Any], list[str]]:
        """The base grid's value of each parameter (the paper's defaults unless the base overrides them).

        Returns (params, skipped): parameters whose default is outside the range are left to the sampler.
        """
        dists = self.distributions()
        params: dict[str, Any] = {}
        skipped: list[str] = []
        for name, p in self.spec.parameters.items():
            kind, _, rest = name.partition(".")
            value = p.default if p.default is not None else _get_path(self._reference_configs.get(kind), rest.split("."))
            dist = dists[name]
            try:
                ok = value is not None and dist._contains(dist.to_internal_repr(value))
            except (ValueError, TypeError):
                ok = False
            if ok:
                params[name] = value
            else:
                skipped.append(f"{name}={value!r}")
        return params, skipped

    # ---- grids ------------------------------------------------------------------------------------
    def trial_grid(self, params: dict[str, Any], name: str) -> Grid:
        """The base grid with its axes fixed to the cell and ``params`` written into the stage configs.

        The grid keeps the base grid's file and line map, so relative paths resolve as in the base.
        Raises ConfigError when the values make a stage config invalid.
        """
        from prism_lab.harness.pipeline import get_pipeline

        raw = self.base.spec.model_dump(mode="json")
        raw["name"] = name
        raw["axes"] = {k: [v] for k, v in self.cell.items()}
        rep = raw.get("report") or {}
        if rep.get("compare_axis") in self.cell:  # a single cell compares nothing: keep the report valid
            rep["baseline"] = rep["treatment"] = self.cell[rep["compare_axis"]]
        for path, value in params.items():
            kind, _, rest = path.partition(".")
            target = raw["data"] if kind == "data" else raw["stages"].setdefault(kind, {})
            set_path(target, rest.split("."), copy.deepcopy(value))
        try:
            spec = GridSpec.model_validate(raw)
        except ValidationError as exc:
            raise validation_error(exc, self.base.lines, str(self.base.path)) from None
        grid = Grid(spec=spec, path=self.base.path, lines=self.base.lines)
        get_pipeline(spec.pipeline).validate(grid)
        return grid

    def overrides(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` as nested grid fields: {"stages": {"align": {...}}, "data": {...}}."""
        out: dict[str, Any] = {}
        for path, value in params.items():
            kind, _, rest = path.partition(".")
            target = out.setdefault("data", {}) if kind == "data" else out.setdefault("stages", {}).setdefault(kind, {})
            set_path(target, rest.split("."), value)
        return out


# ---------------------------------------------------------------------------------------------------
def load_space(path: str | Path) -> SearchSpace:
    """Load and validate a search-space file (and its base grid). Raises a one-line ConfigError."""
    from prism_lab.harness.planning import build_plan

    path = Path(path)
    data, lines = load_yaml(path)
    fname = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{fname}:1: (top level): expected a mapping of search-space fields, got {type(data).__name__}")
    for key in ("parameters", "cell"):
        if data.get(key) is None and key in data:
            data[key] = {}
    try:
        spec = SearchSpaceSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc, lines, fname) from None
    if not spec.name:
        spec.name = path.stem

    def err(p: tuple, msg: str) -> ConfigError:
        return ConfigError(f"{locate(lines, p, fname)}: {dotted(p)}: {msg}")

    base_path = (path.parent / spec.base).resolve()
    if not base_path.is_file():
        raise err(("base",), f"base grid not found: {base_path}")
    try:
        base = load_grid(base_path)
    except ConfigError as exc:
        raise err(("base",), f"the base grid is invalid: {exc}") from None

    cell = resolve_cell(spec, base, base_path, err)
    space = SearchSpace(spec=spec, path=path, lines=lines, base=base, cell=cell)
    try:
        ref = space.trial_grid({}, f"{spec.name}-reference")
        plan = build_plan(ref)
    except ConfigError as exc:
        raise err(("cell",), f"this cell is not valid for {base_path.name}: {detail(exc)}") from None
    space.reference = plan
    cell_obj = plan.cells[0]
    space.roles = list(cell_obj.runs)
    space.kinds = {r.kind for r in plan.runs.values()}
    for role, key in cell_obj.runs.items():
        run = plan.runs[key]
        space._reference_configs.setdefault(run.kind, run.config)
    check_parameters(space, base_path, err)
    check_roles(space, err)
    return space
