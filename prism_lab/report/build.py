"""build_report: ledger -> report.md, results.csv, curves.csv, per-size wide CSVs, deltas.csv and PNG plots.

Regenerable at any time from the ledger alone (the grid is the JSON stored when the sweep was planned);
nothing here imports trainers, torch or transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from prism_lab.errors import PrismError
from prism_lab.harness.ledger import Ledger
from prism_lab.report.flags import render_flags, run_flags
from prism_lab.report.frame import (
    SweepData,
    curves_frame,
    load_sweep,
    resolve_sweep,
    results_frame,
)
from prism_lab.report.markdown import render_report
from prism_lab.report.out_dir import claim_out_dir, discard, make_staging, publish
from prism_lab.report.paper import canonical_column
from prism_lab.report.drift import DriftPoint, drift_chains, plot_drift
from prism_lab.report.plots import plot_curves, plot_deltas
from prism_lab.report.protocol import mixed_lines, render_fingerprints, sweep_fingerprints
from prism_lab.report.protocol_table import protocol_deltas, render_protocol_table
from prism_lab.report.deltas import Delta, build_deltas, deltas_frame
from prism_lab.report.tables import (
    Baseline,
    Row,
    build_rows,
    failed_runs,
    status_counts,
    table_baselines,
    wide_frame,
)


@dataclass
class ReportPaths:
    """Where a report was written."""

    out_dir: Path
    markdown: Path
    results_csv: Path
    curves_csv: Path
    deltas_csv: Path
    tables: dict[str, Path] = field(default_factory=dict)  # size -> wide CSV
    plots: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each: benchmarks whose runs mix eval fingerprints

    def all_files(self) -> list[Path]:
        return [self.markdown, self.results_csv, self.curves_csv, self.deltas_csv, *self.tables.values(), *self.plots]


@dataclass
class Report:
    """The computed report (what the files are rendered from).

    ``rows``/``deltas`` cover the vision benchmarks (their Avg is the paper's); ``retention_rows`` /
    ``retention_deltas`` the text-retention (lm-eval) benchmarks, with their own Avg. ``baselines`` /
    ``retention_baselines``: benchmark -> its chance and majority-answer baselines, from any done eval run of
    the sweep (lm-eval tasks have none)."""

    data: SweepData
    rows: dict[Any, list[Row]]
    deltas: list[Delta]
    bench_columns: dict[str, str | None]
    retention: list[str] = field(default_factory=list)
    retention_rows: dict[Any, list[Row]] = field(default_factory=dict)
    retention_deltas: list[Delta] = field(default_factory=list)
    drift: dict[str, list[DriftPoint]] = field(default_factory=dict)
    baselines: dict[str, Baseline] = field(default_factory=dict)
    retention_baselines: dict[str, Baseline] = field(default_factory=dict)


def _safe(name: Any) -> str:
    """A file name made of ``name``: other characters become ``_``, and never ``.``, ``..`` or a hidden name."""
    out = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))
    return out if out and not out.startswith(".") else "_" + out


def _specs(benchmarks: list[str]) -> dict[str, Any]:
    """benchmark -> its spec (benchmarks/*.yaml), for the names this checkout knows."""
    from prism_lab.errors import ConfigError
    from prism_lab.eval.benchmarks import load_benchmark

    out: dict[str, Any] = {}
    for name in benchmarks:
        try:
            out[name] = load_benchmark(name)
        except (ConfigError, OSError):
            continue
    return out


def benchmark_paper_columns(benchmarks: list[str]) -> dict[str, str | None]:
    """benchmark -> the paper column it IS (an official VLMEvalKit benchmark of the paper); None for anything
    else, synthetic stand-ins included: the paper's numbers are never set beside a different benchmark."""
    specs = _specs(benchmarks)
    return {name: canonical_column(specs[name].paper_column)
            if name in specs and specs[name].source == "vlmevalkit" else None for name in benchmarks}


def retention_benchmarks(benchmarks: list[str]) -> list[str]:
    """The grid's text-retention (lm-eval) benchmarks, in grid order."""
    from prism_lab.eval.benchmarks import RETENTION_GROUP

    specs = _specs(benchmarks)
    return [b for b in benchmarks if b in specs and specs[b].group == RETENTION_GROUP]


def compute_report(ledger: Ledger, target: str | Path) -> Report:
    sweep = resolve_sweep(ledger, target)
    data = load_sweep(ledger, sweep)
    retention = retention_benchmarks(data.benchmarks)
    vision = [b for b in data.benchmarks if b not in retention]
    rows = build_rows(data, vision)
    deltas = build_deltas(data, rows, vision)
    rep = Report(data=data, rows=rows, deltas=deltas, bench_columns=benchmark_paper_columns(vision),
                 retention=retention, drift=drift_chains(data),
                 baselines=table_baselines([r for rs in rows.values() for r in rs], vision))
    if retention:
        rep.retention_rows = build_rows(data, retention)
        rep.retention_deltas = build_deltas(data, rep.retention_rows, retention)
        rep.retention_baselines = table_baselines([r for rs in rep.retention_rows.values() for r in rs], retention)
    return rep


def build_report(ledger_root: str | Path, sweep_name_or_grid_path: str | Path,
                 out_dir: str | Path | None = None) -> ReportPaths:
    """Write the report of one sweep into ``out_dir`` (default ``reports/<sweep>``) and return the paths.

    The directory must be new, empty or a previous report's (out_dir.py): checked before anything is
    written; only the report's own files are replaced."""
    claimed = None if out_dir is None else claim_out_dir(Path(out_dir), label=f"--out {out_dir}")
    ledger = Ledger.open_existing(ledger_root)
    if ledger is None:
        raise PrismError(f"{ledger_root}: no ledger.sqlite here; pass --root (the directory `sweep run` used)")
    try:
        rep = compute_report(ledger, sweep_name_or_grid_path)
        flags = run_flags(ledger, rep.data)
        prints = sweep_fingerprints(ledger, rep.data)
        flags["mixed_eval"] = mixed_lines(prints)
    finally:
        ledger.close()
    data = rep.data
    if claimed is None:
        default = Path("reports") / _safe(data.name)
        claimed = claim_out_dir(default, label=f"report directory {default} (the default of --out)")
    created = not claimed.path.exists()
    staging = make_staging(claimed)
    try:
        checkpoint_of = {k: data.runs[k].inputs.get("checkpoint", "") for k in prints}
        protocols = render_protocol_table(protocol_deltas(prints, data.items, checkpoint_of))
        written = _write_files(rep, flags, staging,
                               "\n".join(p for p in (render_fingerprints(prints, data.benchmarks), protocols) if p))
        publish(claimed, staging, sweep=data.name)
    finally:
        discard(claimed, staging, created=created)
    paths = _final_paths(written, staging, claimed.path)
    paths.warnings = list(flags["mixed_eval"])
    return paths


def _final_paths(written: ReportPaths, staging: Path, out: Path) -> ReportPaths:
    """``written`` (paths in the staging directory) moved to ``out``."""
    def moved(path: Path) -> Path:
        return out / path.relative_to(staging)

    return ReportPaths(out_dir=out, markdown=moved(written.markdown), results_csv=moved(written.results_csv),
                       curves_csv=moved(written.curves_csv), deltas_csv=moved(written.deltas_csv),
                       tables={k: moved(v) for k, v in written.tables.items()},
                       plots=[moved(p) for p in written.plots])


def _write_files(rep: Report, flags: Any, out: Path, fingerprints: str = "") -> ReportPaths:
    """Render every file of the report into ``out`` (``fingerprints``: the evaluation fingerprints section)."""
    data = rep.data
    plots_dir = out / "plots"

    paths = ReportPaths(out_dir=out, markdown=out / "report.md", results_csv=out / "results.csv",
                        curves_csv=out / "curves.csv", deltas_csv=out / "deltas.csv")
    results_frame(data).to_csv(paths.results_csv, index=False)
    curves_frame(data).to_csv(paths.curves_csv, index=False)
    files: dict[str, Path] = {"results": paths.results_csv, "curves": paths.curves_csv}
    vision = [b for b in data.benchmarks if b not in rep.retention]
    for size, rows in rep.rows.items():
        path = out / f"table_{_safe(size)}.csv"
        wide_frame(rows, vision, data.extra_axes, rep.baselines).to_csv(path, index=False)
        paths.tables[str(size)] = path
        files[f"table_{size}"] = path
    for size, rows in rep.retention_rows.items():
        path = out / f"retention_{_safe(size)}.csv"
        wide_frame(rows, rep.retention, data.extra_axes, rep.retention_baselines).to_csv(path, index=False)
        files[f"retention_{size}"] = path
    frames = [deltas_frame(rep.deltas, vision)]
    if rep.retention_deltas:
        frames.append(deltas_frame(rep.retention_deltas, rep.retention).assign(group="text retention"))
    pd.concat([frames[0].assign(group="vision"), *frames[1:]], ignore_index=True).to_csv(paths.deltas_csv, index=False)
    files["deltas"] = paths.deltas_csv

    for path in plot_curves(data, plots_dir):
        paths.plots.append(path)
        files[f"plot_{path.stem}"] = path
    delta_png = plot_deltas(rep.deltas, plots_dir / "delta_avg.png",
                            title=f"{data.name}: Avg Δ ({data.report_spec['treatment']} − "
                                  f"{data.report_spec['baseline']}); error bars = std over seeds")
    if delta_png is not None:
        paths.plots.append(delta_png)
        files["plot_delta_avg"] = delta_png
    drift_png = plot_drift(rep.drift, plots_dir / "drift.png",
                           title=f"{data.name}: where each stage moves the model (arrows: base -> SFT -> PRISM -> RL)")
    if drift_png is not None:
        paths.plots.append(drift_png)
        files["plot_drift"] = drift_png

    text = render_report(data, rep, failed=failed_runs(data), counts=status_counts(data), files=files, out_dir=out)
    flag_text = render_flags(flags)
    extra = "".join("\n" + part for part in (fingerprints, flag_text) if part)
    paths.markdown.write_text(text + extra, encoding="utf-8")
    return paths
