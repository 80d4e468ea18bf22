"""What a stage runner receives: its typed config, its inputs' artifacts, a directory to write, and
a way to log metrics. Runners are plain functions ``run(ctx: StageContext) -> dict | None``; the
returned dict is stored in run.json as the run's summary."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prism_lab.harness.run_reports import RunReports
from prism_lab.harness.tracking import Tracker


@dataclass(frozen=True)
class InputArtifact:
    """A finished upstream run: its key, kind, config and artifact directory."""

    key: str
    kind: str
    path: Path
    config: dict[str, Any]


@dataclass
class StageContext:
    key: str
    kind: str
    label: str
    config: BaseModel
    inputs: dict[str, InputArtifact]
    out_dir: Path  # the in-progress directory; renamed to the final one when the runner returns
    root: Path
    ledger: RunReports  # the ledger (local executor) or the run's events file (Ray executor)
    tracker: Tracker
    attempt: int = 1
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("prism_lab.stage"))
    #: Further entries of the run's run.json (the eval stage's fingerprints); the harness's own entries win.
    record: dict[str, Any] = field(default_factory=dict)

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.tracker.log(step, values)

    def input(self, role: str) -> InputArtifact:
        try:
            return self.inputs[role]
        except KeyError:
            raise KeyError(f"stage {self.kind} has no input {role!r} (has: {', '.join(self.inputs)})") from None

    def heartbeat(self) -> None:
        self.ledger.heartbeat(self.key)


def artifact_dir(root: Path, kind: str, key: str) -> Path:
    """Final artifact directory of a run."""
    return Path(root) / "runs" / kind / key[:16]


def partial_dir(root: Path, kind: str, key: str) -> Path:
    """Where a run writes while it is in progress (kept across restarts for resuming)."""
    return Path(root) / "runs" / kind / f".{key[:16]}.partial"
