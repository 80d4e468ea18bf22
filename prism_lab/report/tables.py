"""Paper-shaped tables from a sweep: rows per size (+SFT, SFT+X, PRISM, PRISM+X, ...), seed aggregation,
the benchmarks' baselines and the per-size CSV frames. The treatment − baseline deltas between these rows and
their significance are :mod:`prism_lab.report.deltas`.

Row identity: (size, stage, alignment, algorithm, extras), where ``stage`` is the evaluated checkpoint
(``base``, ``sft``, ``align``, ``rl``) and ``extras`` are the non-core axes that change that stage's runs
(found from the ledger: an axis splits a row only when cells differing in it have different runs).
Replicates of a row are its seeds. Accuracies are reported in percent.

Baselines: each benchmark's chance and majority-answer accuracy, as its eval runs logged them (the same for
every checkpoint); a result within the noise band of the majority baseline is marked (see :class:`Baseline`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from prism_lab.eval.baselines import NOISE_SE, noise_band
from prism_lab.report.frame import (
    BASELINE_METRICS,
    EVAL_ROLES,
    STATUS_PRIORITY,
    SweepData,
)
from prism_lab.report.stats import mean_std

AVG = "Avg"
STAGE_ORDER = ("base", "sft", "align", "rl")
#: Labels of alignment values (others are upper-cased).
ALIGN_LABELS = {"none": "SFT", "prism": "PRISM", "gad": "GAD"}
#: Baseline metric -> the label of its table row.
BASELINE_LABELS = {"chance": "chance", "majority": "majority answer"}
#: A baseline the sweep's eval runs disagree on (a different benchmark file or limit): shown, never picked.
VARIES = "varies"


def alignment_label(value: Any) -> str:
    return ALIGN_LABELS.get(str(value), str(value).upper())


def algorithm_label(value: Any) -> str:
    return str(value).upper()


def worst_status(statuses: list[str]) -> str:
    """`done` when all are done, else the first of failed > running > blocked > pending > missing present."""
    if not statuses:
        return "missing"
    for s in STATUS_PRIORITY:
        if s != "done" and s in statuses:
            return s
    if all(s == "done" for s in statuses):
        return "done"
    return next(s for s in statuses if s != "done")


@dataclass
class Row:
    """One line of a size's table: a stage checkpoint aggregated over seeds."""

    size: Any
    stage: str
    alignment: Any | None
    algorithm: Any | None
    extras: tuple[tuple[str, Any], ...]
    benchmarks: list[str]
    reps: dict[Any, str] = field(default_factory=dict)  # seed -> eval run key
    rep_status: dict[Any, str] = field(default_factory=dict)
    values: dict[Any, dict[str, float]] = field(default_factory=dict)  # done seeds -> benchmark -> %
    items: dict[Any, dict[str, dict[str, float]]] = field(default_factory=dict)  # done seeds -> bench -> item -> score
    baselines: dict[Any, dict[str, dict[str, float]]] = field(default_factory=dict)  # done seeds -> bench -> chance...

    # ---- identity ---------------------------------------------------------------------------------
    @property
    def base_label(self) -> str:
        if self.stage == "base":
            return "Instruct"  # the paper's row of the model a chain starts from
        if self.stage == "sft":
            return "+SFT"
        if self.stage == "align":
            return alignment_label(self.alignment)
        prefix = "SFT" if self.alignment in (None, "none") else alignment_label(self.alignment)
        return f"{prefix}+{algorithm_label(self.algorithm)}"

    @property
    def label(self) -> str:
        if not self.extras:
            return self.base_label
        return f"{self.base_label} [{', '.join(f'{k}={v}' for k, v in self.extras)}]"

    def attrs(self) -> dict[str, Any]:
        """The row's identifying values (axis name -> value), used to pair treatment and baseline rows."""
        out: dict[str, Any] = {"size": self.size, "stage": self.stage}
        if self.alignment is not None:
            out["alignment"] = self.alignment
        if self.algorithm is not None:
            out["algorithm"] = self.algorithm
        out.update(dict(self.extras))
        return out

    # ---- status -----------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        return worst_status(list(self.rep_status.values()))

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def n_total(self) -> int:
        return len(self.reps)

    @property
    def n_done(self) -> int:
        return sum(1 for s in self.rep_status.values() if s == "done")

    # ---- numbers ----------------------------------------------------------------------------------
    def seed_avg(self, seed: Any) -> float | None:
        """Mean over the grid's benchmarks of one seed (None if a benchmark has no value)."""
        vals = self.values.get(seed, {})
        if not self.benchmarks or any(b not in vals for b in self.benchmarks):
            return None
        return sum(vals[b] for b in self.benchmarks) / len(self.benchmarks)

    def seed_value(self, seed: Any, column: str) -> float | None:
        return self.seed_avg(seed) if column == AVG else self.values.get(seed, {}).get(column)

    def stat(self, column: str) -> tuple[float | None, float | None, int]:
        """(mean, sample std, n) over the done seeds for a benchmark or ``Avg``."""
        vals = [v for s in self.values if (v := self.seed_value(s, column)) is not None]
        return mean_std(vals)


# ---- building rows ---------------------------------------------------------------------------------
def _relevant_extras(data: SweepData, role: str) -> dict[str, list[str]]:
    """cell id -> the non-core axes that change that cell's ``role`` run (cells that differ from it only in
    the axis use other runs). E.g. ``align.caption_weight`` splits PRISM+X rows but not SFT+X rows."""
    cells = [c for c in data.cells if role in c.roles]
    out: dict[str, list[str]] = {c.cell_id: [] for c in cells}
    for axis in data.extra_axes:
        def rest(c: Any) -> str:
            return json.dumps({k: v for k, v in c.axes.items() if k != axis}, sort_keys=True, default=str)

        groups: dict[str, set[str]] = {}
        for c in cells:
            groups.setdefault(rest(c), set()).add(c.roles[role])
        for c in cells:
            if len(groups[rest(c)]) > 1:
                out[c.cell_id].append(axis)
    return out


def build_rows(data: SweepData, benchmarks: list[str] | None = None) -> dict[Any, list[Row]]:
    """size -> its rows, in the paper's order (Instruct, +SFT, SFT+X..., then per alignment: ALIGN, ALIGN+X...).

    ``benchmarks``: the columns (and what ``Avg`` averages); default every benchmark of the grid."""
    benchmarks = list(data.benchmarks if benchmarks is None else benchmarks)
    rows: dict[tuple, Row] = {}
    for role, stage in EVAL_ROLES.items():
        extras_axes = _relevant_extras(data, role)
        for cell in data.cells:
            key = cell.roles.get(role)
            if key is None:
                continue
            ax = cell.axes
            alignment = ax.get("alignment") if stage in ("align", "rl") else None
            algorithm = ax.get("algorithm") if stage == "rl" else None
            extras = tuple((a, ax.get(a)) for a in extras_axes[cell.cell_id])
            ident = (json.dumps(ax.get("size"), default=str), stage, json.dumps(alignment, default=str),
                     json.dumps(algorithm, default=str), json.dumps(extras, default=str))
            row = rows.get(ident)
            if row is None:
                row = rows[ident] = Row(size=ax.get("size"), stage=stage, alignment=alignment, algorithm=algorithm,
                                        extras=extras, benchmarks=benchmarks)
            seed = ax.get("seed", 0)
            if seed in row.reps:
                continue  # the same run, shared by the cells of other algorithms/alignments
            row.reps[seed] = key
            status = data.chain_status(key)
            row.rep_status[seed] = status
            if status == "done":
                row.values[seed] = {b: 100.0 * v for b, v in data.accuracies(key).items()}
                row.items[seed] = data.items.get(key, {})
                row.baselines[seed] = {b: v for b, v in data.baselines(key).items() if b in benchmarks}

    def order(row: Row) -> tuple:
        if row.stage in ("base", "sft"):
            group = 0
        elif row.alignment in (None, "none"):
            group = 1
        else:
            group = 2 + data.axis_order("alignment", row.alignment)
        return (data.axis_order("size", row.size), group, STAGE_ORDER.index(row.stage),
                data.axis_order("algorithm", row.algorithm) if row.algorithm is not None else -1,
                tuple(data.axis_order(a, v) for a, v in row.extras))

    by_size: dict[Any, list[Row]] = {}
    for row in sorted(rows.values(), key=order):
        by_size.setdefault(row.size, []).append(row)
    return by_size


# ---- baselines -------------------------------------------------------------------------------------
@dataclass
class Baseline:
    """One benchmark's chance and majority-answer accuracy (fractions) and item count, as the done eval runs
    logged them; ``VARIES`` where runs disagree, None where none logged it.

    "Within noise": a mean accuracy below ``majority + noise_band(majority, n)`` (NOISE_SE binomial standard
    errors of the majority baseline on the benchmark's n items) is indistinguishable from, or worse than,
    answering every question of a type with its most frequent answer."""

    chance: float | str | None = None
    majority: float | str | None = None
    n: float | str | None = None

    def band(self) -> float | None:
        """The noise band in points of accuracy; None without a single majority value and item count."""
        if not isinstance(self.majority, float) or not isinstance(self.n, float):
            return None
        half = noise_band(self.majority, int(self.n))
        return None if math.isnan(half) else 100.0 * half

    def within_noise(self, mean: float | None) -> bool:
        """True when a mean accuracy (%) is at most majority + band (also in %)."""
        band = self.band()
        if mean is None or band is None:
            return False
        return mean <= 100.0 * float(self.majority) + band + 1e-9  # type: ignore[arg-type]

    def percent(self, metric: str) -> float | str | None:
        """chance / majority in % (VARIES and None as they are)."""
        v = getattr(self, metric)
        return 100.0 * v if isinstance(v, float) else v


def _agreed(values: list[float]) -> float | str | None:
    """The one value every run logged (compared to 9 decimals), VARIES if they differ, None if none."""
    distinct = {round(v, 9) for v in values}
    if not distinct:
        return None
    return float(values[0]) if len(distinct) == 1 else VARIES


def table_baselines(rows: list[Row], benchmarks: list[str]) -> dict[str, Baseline]:
    """benchmark -> its Baseline from every done eval run of ``rows`` (any size: a property of the file);
    benchmarks without a logged baseline (lm-eval tasks, runs from before baselines) are left out."""
    out: dict[str, Baseline] = {}
    for b in benchmarks:
        logged = [rb[b] for row in rows for rb in row.baselines.values() if b in rb]
        if not logged:
            continue
        out[b] = Baseline(*(_agreed([x[m] for x in logged if m in x]) for m in (*BASELINE_METRICS, "n")))
    return out


def baseline_avg(baselines: dict[str, Baseline], benchmarks: list[str], metric: str) -> float | str | None:
    """The Avg column of a baseline row (%): the mean over the benchmarks, as Avg is for result rows; None
    when a benchmark has no baseline, VARIES when one varies."""
    vals = [baselines[b].percent(metric) if b in baselines else None for b in benchmarks]
    if not vals or any(v is None for v in vals):
        return None
    if any(v == VARIES for v in vals):
        return VARIES
    return sum(vals) / len(vals)  # type: ignore[arg-type]


def noise_note() -> str:
    """How "within noise" is decided (the Method section's words)."""
    return (f"below the benchmark's majority-answer baseline + {NOISE_SE:g} binomial standard errors of it "
            f"(2·sqrt(p(1−p)/n), p = majority baseline, n = the benchmark's items)")


# ---- CSV frames ------------------------------------------------------------------------------------
def csv_number(x: float | None) -> float:
    """A CSV number: NaN when absent; rounded to 6 decimals (drops float noise like 58.599999999999994)."""
    return math.nan if x is None else round(float(x), 6)


def wide_frame(rows: list[Row], benchmarks: list[str], extra_axes: list[str],
               baselines: dict[str, Baseline] | None = None) -> pd.DataFrame:
    """One size's table as numbers: mean and sample std per benchmark and Avg (blank when not done), then the
    baseline rows (``chance``, ``majority answer`` in %; status ``baseline``, or ``varies: <benchmarks>``
    with those cells blank) when a benchmark has baselines."""
    records = []
    for row in rows:
        rec: dict[str, Any] = {"method": row.label, "stage": row.stage, "alignment": row.alignment,
                               "algorithm": row.algorithm}
        extras = dict(row.extras)
        for a in extra_axes:
            rec[a] = extras.get(a)
        rec.update({"status": row.status, "n_done": row.n_done, "n_total": row.n_total})
        for col in [*benchmarks, AVG]:
            mean, std, _n = row.stat(col) if row.done else (None, None, 0)
            rec[col] = csv_number(mean)
            rec[f"{col}_std"] = csv_number(std)
        records.append(rec)
    records += _baseline_records(baselines or {}, benchmarks)
    cols = ["method", "stage", "alignment", "algorithm", *extra_axes, "status", "n_done", "n_total"]
    for col in [*benchmarks, AVG]:
        cols += [col, f"{col}_std"]
    frame = pd.DataFrame.from_records(records, columns=cols)
    # seed counts stay integers (blank on the baseline rows), not floats
    return frame.astype({"n_done": "Int64", "n_total": "Int64"})


def _baseline_records(baselines: dict[str, Baseline], benchmarks: list[str]) -> list[dict[str, Any]]:
    """The wide CSV's baseline rows (none when no benchmark has a baseline)."""
    if not any(b in baselines for b in benchmarks):
        return []
    out = []
    for metric, label in BASELINE_LABELS.items():
        rec: dict[str, Any] = {"method": label}
        values = {b: baselines[b].percent(metric) if b in baselines else None for b in benchmarks}
        values[AVG] = baseline_avg(baselines, benchmarks, metric)
        varies = [b for b in benchmarks if values[b] == VARIES]
        rec["status"] = f"{VARIES}: {', '.join(varies)}" if varies else "baseline"
        for col, v in values.items():
            rec[col] = csv_number(v if isinstance(v, float) else None)
            rec[f"{col}_std"] = math.nan
        out.append(rec)
    return out


def failed_runs(data: SweepData) -> list[dict[str, Any]]:
    """Failed runs of the sweep (any stage) with their error and log path, in plan order."""
    out = []
    seen = set()
    for cell in data.cells:
        for role, key in cell.roles.items():
            run = data.runs.get(key)
            if key in seen or run is None or run.status != "failed":
                continue
            seen.add(key)
            out.append({"key": key, "kind": run.kind, "role": role, "label": run.label,
                        "attempts": run.attempts, "error": run.error or "", "log_path": run.log_path or ""})
    return out


def status_counts(data: SweepData) -> dict[str, int]:
    """Effective status -> number of distinct runs used by the sweep's cells."""
    keys = {k for c in data.cells for k in c.roles.values()}
    counts: dict[str, int] = {}
    for k in keys:
        s = data.run_status(k)
        counts[s] = counts.get(s, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: STATUS_PRIORITY.index(kv[0]) if kv[0] in STATUS_PRIORITY else 99))
