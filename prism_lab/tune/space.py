"""Search-space files (sweeps/*.yaml): the base grid cell a study starts from, the parameters with
their ranges and scales, the objective(s) and, optionally, pruning.

    name: disc                       # study name (default: the file name)
    base: ../experiments/toy.yaml    # grid the trials start from (relative to this file)
    cell: {size: 4b, algorithm: grpo, alignment: prism, seed: 0}   # one value per axis of the base grid
    objective:  {role: eval/rl, metric: eval/avg/accuracy, reduce: last, direction: maximize}
    second_objective: {role: rl, metric: response_length/mean, reduce: mean, direction: minimize}  # optional
    parameters:
      align.caption_weight: {type: float, low: 0.1, high: 0.9}
      align.critic_lr: {type: float, low: 1.0e-7, high: 1.0e-4, log: true}
      disc_warmup.discriminator.num_experts: {type: categorical, choices: [2, 4, 8]}

A parameter path is ``<stage>.<field>[.<sub-field>]``, as grid axes write them. Every problem is a
ConfigError of one line naming the file, the line and the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from prism_lab.config.base import StrictModel
from prism_lab.errors import ConfigError
from prism_lab.harness.grid import Grid, GridSpec, validation_error
from prism_lab.harness.planning import load_grid
from prism_lab.harness.pipeline import set_path
from prism_lab.harness.yamlio import LineMap, dotted, load_yaml, locate

__all__ = ["ObjectiveSpec", "ParamSpec", "PruningSpec", "SearchSpace", "SearchSpaceSpec", "load_space"]

Direction = Literal["maximize", "minimize"]
Reducer = Literal["last", "max", "min", "mean"]


class ObjectiveSpec(StrictModel):
    """A number read from the ledger after a trial: a metric of the run that has ``role`` in the cell."""

    role: str = Field(description="Cell role of the run, e.g. `eval/rl`, `eval/align`, `align`, `rl`.")
    metric: str = Field(description="Metric name as the run logs it, e.g. `eval/avg/accuracy`.")
    reduce: Reducer = Field("last", description="How the metric's steps become one number: last, max, min, mean.")
    direction: Direction = Field("maximize", description="`maximize` or `minimize`.")

    @property
    def label(self) -> str:
        return f"{self.metric} [{self.role}]"


class ReportSpec(StrictModel):
    """An intermediate value for pruning, read after the run with ``role`` finishes."""

    role: str = Field(description="Cell role of the run whose metric is reported when that run finishes.")
    metric: str = Field(description="Metric name, e.g. `gap/cot` (align) or `reward/mean` (rl).")
    reduce: Reducer = Field("last", description="How the metric's steps become one number.")
    direction: Direction | None = Field(
        None,
        description="Whether higher or lower is better for this metric. When it differs from the objective's "
        "direction the value is negated, so the pruner compares like with like. Default: the objective's.",
    )


class PruningSpec(StrictModel):
    """Stage-granular pruning (single objective only)."""

    pruner: Literal["median", "percentile", "none"] = Field("median", description="Optuna pruner.")
    percentile: float = Field(25.0, gt=0, lt=100, description="Percentile kept by the `percentile` pruner.")
    n_startup_trials: int = Field(3, ge=0, description="Trials that are never pruned before the pruner acts.")
    report: list[ReportSpec] = Field(
        default_factory=list,
        description="Intermediate values, in pipeline order; step i is reported after the i-th run finishes "
        "and the trial may be pruned before the next stage starts.",
    )


class ParamSpec(StrictModel):
    """One tuned config field."""

    type: Literal["float", "int", "categorical"] = Field(description="float, int or categorical.")
    low: float | int | None = Field(None, description="Lower bound (float, int).")
    high: float | int | None = Field(None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0).")
    step: float | int | None = Field(None, description="Discretisation step (not with log for floats).")
    choices: list[Any] | None = Field(None, description="Values of a categorical parameter.")
    default: Any = Field(
        None,
        description="Value used by the enqueued defaults trial (default: the base grid's resolved value, i.e. "
        "the paper's default unless the base grid overrides it).",
    )


class SearchSpaceSpec(StrictModel):
    """A search-space file."""

    name: str = Field("", description="Study name (default: the file name).")
    description: str = Field("", description="Free text shown in the summary.")
    base: str = Field(description="Base grid file, relative to this file.")
    cell: dict[str, Any] = Field(
        default_factory=dict,
        description="Axis -> value: the cell of the base grid every trial starts from. Axes with a single "
        "value in the base grid may be left out.",
    )
    objective: ObjectiveSpec = Field(description="What a trial optimises.")
    second_objective: ObjectiveSpec | None = Field(
        None, description="Optional second objective: multi-objective search (NSGA-II, Pareto front, no pruning)."
    )
    parameters: dict[str, ParamSpec] = Field(description="Config path -> range.")
    sampler: Literal["auto", "tpe", "random", "nsga2"] = Field(
        "auto", description="`auto` = TPE for one objective, NSGA-II for two."
    )
    seed: int | None = Field(0, description="Sampler seed (trial n samples with seed + n); null = random.")
    pruning: PruningSpec | None = Field(None, description="Stage-granular pruning; single objective only.")
    enqueue_defaults: bool = Field(
        True, description="Run the base grid's values (the paper's defaults) as the first trial of a new study."
    )


# ---------------------------------------------------------------------------------------------------
def _walk_fields(model: type[BaseModel], parts: list[str]) -> str | None:
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


def _get_path(cfg: Any, parts: list[str]) -> Any:
    node = cfg
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def _detail(exc: ConfigError) -> str:
    """The message of a located ConfigError without its ``file:line: field:`` prefix."""
    return str(exc).split(": ", 2)[-1]


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
    from prism_lab.harness.stage_kinds import STAGE_KINDS

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

    # the cell: one value per axis of the base grid
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

    space = SearchSpace(spec=spec, path=path, lines=lines, base=base, cell=cell)
    try:
        ref = space.trial_grid({}, f"{spec.name}-reference")
        plan = build_plan(ref)
    except ConfigError as exc:
        raise err(("cell",), f"this cell is not valid for {base_path.name}: {_detail(exc)}") from None
    cell_obj = plan.cells[0]
    space.roles = list(cell_obj.runs)
    space.kinds = {r.kind for r in plan.runs.values()}
    for role, key in cell_obj.runs.items():
        run = plan.runs[key]
        space._reference_configs.setdefault(run.kind, run.config)

    # parameters
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
            problem = _walk_fields(STAGE_KINDS.get(kind).config_model(), rest.split("."))
            if problem:
                raise err(at, f"unknown parameter path {name!r}: {problem}")
        if kind not in space.kinds:
            raise err(at, f"stage {kind!r} does not run in the cell "
                          f"({', '.join(f'{k}={v}' for k, v in cell.items())}), so {name!r} would change nothing")
        _check_param(p, at, err)
        values = [("choices", i, v) for i, v in enumerate(p.choices)] if p.type == "categorical" else \
            [("low", None, p.low), ("high", None, p.high)]
        for field_name, idx, value in values:
            where = at + ((field_name, idx) if idx is not None else (field_name,))
            try:
                build_plan(space.trial_grid({name: value}, f"{spec.name}-check"))
            except ConfigError as exc:
                raise err(where, f"{value!r} is not a valid value of {name}: {_detail(exc)}") from None

    # objectives and pruning
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


def _check_param(p: ParamSpec, at: tuple, err: Any) -> None:
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
