"""Metrics go to the ledger (or, for a Ray stage run, to its events file) and, unless disabled, to a W&B run (offline by default).

One W&B run per stage run: its group is the sweep, its config carries the grid axes the run depends
on (``axes``, the values shared by every cell that uses it) next to the stage config, and its tags are
those axes as ``axis=value``; its directory is inside the stage's run directory (offline runs are
uploaded later with ``wandb sync``, see the README). Eval runs also log tables of sample generations. W&B is never required: if the package is missing or
``PRISM_LAB_WANDB=disabled``, only the ledger is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from prism_lab.harness.run_reports import RunReports


def wandb_mode() -> str:
    """`offline` (default), `online` or `disabled`, from PRISM_LAB_WANDB (else WANDB_MODE)."""
    mode = os.environ.get("PRISM_LAB_WANDB") or os.environ.get("WANDB_MODE") or "offline"
    return mode if mode in ("offline", "online", "disabled") else "offline"


class Tracker:
    def __init__(self, ledger: RunReports, run_key: str, *, kind: str, label: str, config: dict[str, Any],
                 run_dir: Path, group: str | None = None, tags: list[str] | None = None) -> None:
        self.ledger = ledger
        self.run_key = run_key
        self._wandb_run = None
        if wandb_mode() != "disabled":
            try:
                import wandb
            except ImportError:
                wandb = None
            if wandb is not None:
                os.environ.setdefault("WANDB_SILENT", "true")
                wandb_dir = run_dir / "wandb"
                wandb_dir.mkdir(parents=True, exist_ok=True)
                self._wandb_run = wandb.init(
                    project=os.environ.get("PRISM_LAB_WANDB_PROJECT", "prism-lab"), dir=str(run_dir),
                    mode=wandb_mode(), name=label, id=run_key[:16], resume="allow", group=group,
                    job_type=kind, tags=(tags or [])[:20], config={"run_key": run_key, "kind": kind, **config},
                    reinit="finish_previous",
                )

    def log(self, step: int, values: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in values.items() if v is not None}
        if not clean:
            return
        self.ledger.log_metrics(self.run_key, step, clean)
        if self._wandb_run is not None:
            self._wandb_run.log({k: v for k, v in clean.items() if math.isfinite(v)}, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]], *, step: int = 0) -> None:
        """A W&B table (e.g. an eval run's sample generations); PIL images in a row become ``wandb.Image``.
        Tables go to W&B only: the ledger keeps numbers."""
        if self._wandb_run is None or not rows:
            return
        import wandb

        def cell(x: Any) -> Any:
            return wandb.Image(x) if hasattr(x, "convert") and hasattr(x, "size") else x

        self._wandb_run.log({name: wandb.Table(columns=columns, data=[[cell(x) for x in r] for r in rows])}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb_run is not None:
            self._wandb_run.summary.update(values)

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
