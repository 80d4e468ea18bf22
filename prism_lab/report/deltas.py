"""Treatment − baseline deltas of a sweep's paper tables: the pairs of rows the grid's compare axis makes
(PRISM+X − SFT+X per size and algorithm, the alignment-only PRISM − +SFT, or another compare axis), their
differences paired by seed with the grid's significance method, the paired item bootstrap over benchmark items,
and deltas.csv.

The rows they pair are built in :mod:`prism_lab.report.tables`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from prism_lab.report.frame import SweepData
from prism_lab.report.item_bootstrap import item_bootstrap_interval, item_differences
from prism_lab.report.stats import Interval, paired_interval
from prism_lab.report.tables import AVG, Row, csv_number, worst_status


@dataclass
class Delta:
    """treatment − baseline for one pair of rows, per benchmark and Avg, paired by seed."""

    size: Any
    treatment: Row
    baseline: Row
    method: str
    kind: str = "rl"  # "rl": PRISM+X − SFT+X; "align": PRISM − +SFT; "other": a non-alignment compare axis
    diffs: dict[str, list[float]] = field(default_factory=dict)
    intervals: dict[str, Interval] = field(default_factory=dict)  # over seeds (the grid's significance method)
    item_intervals: dict[str, Interval] = field(default_factory=dict)  # paired bootstrap over benchmark items
    seeds: list[Any] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.treatment.label} − {self.baseline.label}"

    @property
    def algorithm(self) -> Any | None:
        return self.treatment.algorithm

    @property
    def status(self) -> str:
        return worst_status([self.treatment.status, self.baseline.status])

    @property
    def done(self) -> bool:
        return self.status == "done"

    def compute(self, columns: list[str]) -> None:
        self.seeds = [s for s in self.treatment.reps if s in self.baseline.reps]
        self.diffs, self.intervals = {}, {}
        if not self.done:
            return
        for col in columns:
            d = []
            for s in self.seeds:
                t, b = self.treatment.seed_value(s, col), self.baseline.seed_value(s, col)
                if t is not None and b is not None:
                    d.append(t - b)
            self.diffs[col] = d
            self.intervals[col] = paired_interval(d, self.method)
        benches = [c for c in columns if c != AVG]
        per_bench = {b: item_differences(self.treatment.items, self.baseline.items, b) for b in benches}
        for col in columns:
            self.item_intervals[col] = item_bootstrap_interval(list(per_bench.values()) if col == AVG
                                                               else [per_bench[col]])


# ---- pairing rows ----------------------------------------------------------------------------------------
def _compatible(a: dict[str, Any], b: dict[str, Any], skip: set[str]) -> bool:
    return all(a[k] == b[k] for k in a if k in b and k not in skip)


def build_deltas(data: SweepData, rows: dict[Any, list[Row]], benchmarks: list[str] | None = None) -> list[Delta]:
    """Treatment − baseline of the grid's compare axis for every matching pair of rows.

    With the default compare axis (alignment: none vs prism) these are PRISM+X − SFT+X per size and
    algorithm, plus the alignment-only PRISM − +SFT. ``benchmarks``: the columns (default: the grid's).
    """
    rep = data.report_spec
    axis, base_v, treat_v, method = rep["compare_axis"], rep["baseline"], rep["treatment"], rep["significance"]
    columns = [*(data.benchmarks if benchmarks is None else benchmarks), AVG]
    all_rows = [r for rs in rows.values() for r in rs]
    out: list[Delta] = []

    def value_of(row: Row) -> Any:
        return row.attrs().get(axis, _MISSING)

    for t in all_rows:
        if value_of(t) != treat_v:
            continue
        t_attrs = t.attrs()
        for b in all_rows:
            if b is t or value_of(b) != base_v or b.stage != t.stage:
                continue
            if axis != "size" and b.size != t.size:
                continue
            if not _compatible(t_attrs, b.attrs(), {axis}):
                continue
            kind = "rl" if axis == "alignment" else "other"
            out.append(Delta(size=t.size, treatment=t, baseline=b, method=method, kind=kind))
        if axis == "alignment" and base_v == "none" and t.stage == "align":
            for b in all_rows:
                if b.stage == "sft" and b.size == t.size and _compatible(t_attrs, b.attrs(), {"stage", "alignment"}):
                    out.append(Delta(size=t.size, treatment=t, baseline=b, method=method, kind="align"))
    for d in out:
        d.compute(columns)

    def order(d: Delta) -> tuple:
        return (data.axis_order("size", d.size), 0 if d.kind != "align" else 1,
                data.axis_order("algorithm", d.algorithm) if d.algorithm is not None else -1,
                tuple(data.axis_order(a, v) for a, v in d.treatment.extras))

    return sorted(out, key=order)


class _Missing:
    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0


_MISSING = _Missing()


def deltas_frame(deltas: list[Delta], benchmarks: list[str]) -> pd.DataFrame:
    """deltas.csv: one row per comparison x column (benchmarks and Avg), in points of accuracy."""
    records = []
    for d in deltas:
        for col in [*benchmarks, AVG]:
            iv = d.intervals.get(col)
            records.append({
                "size": d.size, "comparison": d.label, "kind": d.kind, "treatment": d.treatment.label,
                "baseline": d.baseline.label, "algorithm": d.algorithm, "benchmark": col, "status": d.status,
                "n_pairs": iv.n if iv else 0, "mean": csv_number(iv.mean if iv else None),
                "std": csv_number(iv.std if iv else None), "ci_low": csv_number(iv.low if iv else None),
                "ci_high": csv_number(iv.high if iv else None),
                "significant": None if iv is None or iv.significant is None else bool(iv.significant),
                "method": d.method, "note": iv.note if iv else "",
                **_item_columns(d.item_intervals.get(col)),
            })
    cols = ["size", "comparison", "kind", "treatment", "baseline", "algorithm", "benchmark", "status", "n_pairs",
            "mean", "std", "ci_low", "ci_high", "significant", "method", "note", "item_n", "item_mean",
            "item_ci_low", "item_ci_high", "item_significant", "item_method"]
    return pd.DataFrame.from_records(records, columns=cols)


def _item_columns(iv: Interval | None) -> dict[str, Any]:
    """deltas.csv columns of the item-bootstrap interval (blank when there are no item scores)."""
    return {"item_n": iv.n if iv else 0, "item_mean": csv_number(iv.mean if iv else None),
            "item_ci_low": csv_number(iv.low if iv else None), "item_ci_high": csv_number(iv.high if iv else None),
            "item_significant": None if iv is None or iv.significant is None else bool(iv.significant),
            "item_method": iv.method if iv else ""}
