"""Reports computed from the ledger alone (no trainer, torch or transformers imports).

``build_report(ledger_root, sweep_or_grid, out_dir)`` writes report.md (paper-shaped tables per size,
deltas with significance, the paper's numbers side by side, failed runs), results.csv (tidy),
curves.csv, per-size wide CSVs, deltas.csv and PNG plots.
Only into a directory it owns, replacing only its own files (:mod:`prism_lab.report.out_dir`, the
manifest ``.prism-lab-report.json``).
"""

from prism_lab.report.build import Report, ReportPaths, build_report, compute_report

__all__ = ["Report", "ReportPaths", "build_report", "compute_report"]
