"""Metrics go to the ledger and, unless disabled, to a W&B run (offline by default).

One W&B run per stage run, grouped by sweep, tagged with the cells that use it; its directory is
inside the stage's run directory. W&B is never required: if the package is missing or
``PRISM_LAB_WANDB=disabled``, only the ledger is written.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from prism_lab.harness.ledger import Ledger


def wandb_mode() -> str:
    """`offline` (default), `online` or `disabled`, from PRISM_LAB_WANDB (else WANDB_MODE)."""
    mode = os.environ.get("PRISM_LAB_WANDB") or os.environ.get("WANDB_MODE") or "offline"
    return mode if mode in ("offline", "online", "disabled") else "offline"


class Tracker:
    def __init__(self, ledger: Ledger, run_key: str, *, kind: str, label: str, config: dict[str, Any],
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

    def summary(self, values: dict[str, Any]) -> None:
        if self._wandb_run is not None:
            self._wandb_run.summary.update(values)

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None
