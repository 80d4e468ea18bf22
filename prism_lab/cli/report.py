"""`prism-lab report GRID_OR_SWEEP [--root DIR] [--out DIR]` (registered on the main app in cli.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer


def report(
    target: Annotated[str, typer.Argument(
        metavar="GRID_OR_SWEEP",
        help="A grid file (e.g. experiments/toy.yaml) or the name of a sweep recorded in the ledger.")],
    root: Annotated[Optional[Path], typer.Option(
        "--root", help="Directory holding ledger.sqlite (default: $PRISM_LAB_ROOT or ./runs).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Output directory (default: reports/<sweep>): a new or empty one, or one a previous report "
        "wrote (its .prism-lab-report.json lists the files the report replaces; others are never touched).")] = None,
) -> None:
    """Write report.md, results.csv, per-size tables, deltas.csv and plots for a sweep, from the ledger alone.

    Tables follow the paper (rows +SFT, SFT+X, PRISM, PRISM+X per size; benchmarks + Avg), with mean ± std
    over seeds, PRISM+X − SFT+X deltas and their significance (the grid's report.significance). Runs that
    are not done are shown with their status. Safe to re-run at any time.
    """
    from prism_lab.report import build_report

    ledger_root = Path(root or os.environ.get("PRISM_LAB_ROOT") or "runs")
    paths = build_report(ledger_root, target, out)
    for line in paths.warnings:  # benchmarks whose eval runs mix fingerprints: never only in the file
        typer.echo(f"warning: {line}", err=True)
    typer.echo(f"report: {paths.markdown}")
    typer.echo(f"tables: {paths.results_csv}, {paths.deltas_csv}, "
               + ", ".join(str(p) for p in paths.tables.values()))
    typer.echo(f"plots: {len(paths.plots)} PNG in {paths.out_dir / 'plots'}")
