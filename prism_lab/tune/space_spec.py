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
ConfigError of one line naming the file, the line and the field (see :func:`prism_lab.tune.space.load_space`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from prism_lab.config.base import StrictModel

__all__ = ["ObjectiveSpec", "ParamSpec", "PruningSpec", "ReportSpec", "SearchSpaceSpec"]

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
