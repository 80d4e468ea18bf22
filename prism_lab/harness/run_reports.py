"""A stage run that does not touch the ledger: what it needs comes in a spec file, what it reports goes
out as JSON lines appended to ``events.jsonl`` in its run directory, and the executor that started it
(the only ledger writer) takes them in.

Used by the Ray executor, whose stage processes run on other nodes: SQLite's WAL mode needs shared
memory between the processes that open the database, so it cannot be shared over a network filesystem
(SQLite documentation, "Write-Ahead Logging", section 2 "Activating And Configuring WAL Mode"; and
"SQLite Over a Network, Caveats and Considerations"). Appending lines to a file in the run directory
needs nothing but the shared storage the artifacts already live on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

SPEC_FILE = "spec.json"
EVENTS_FILE = "events.jsonl"


class RunReports(Protocol):
    """Where a stage process reports: the ledger itself (local executor, ``harness.ledger.Ledger``) or an
    :class:`EventFile` (Ray executor). harness/run_stage.py uses only these methods, never the type."""

    def log_metrics(self, key: str, step: int, values: dict[str, float]) -> None: ...

    def heartbeat(self, key: str) -> None: ...

    def log_item_scores(self, key: str, benchmark: str, scores: dict[str, float]) -> None: ...

    def event(self, kind: str, message: str, *, run_key: str | None = None) -> None: ...

    def mark_done(self, key: str, artifact_path: str, *, log_path: str | None = None) -> None: ...

    def report_failed(self, key: str, message: str) -> None: ...

    def move_to(self, directory: Path) -> None: ...

    def for_thread(self) -> "RunReports": ...

    def close(self) -> None: ...


@dataclass
class RunSpec:
    """Everything a stage process reads about its run: the ledger's row, its inputs' artifacts, its cells."""

    key: str
    kind: str
    label: str
    config: dict[str, Any]
    attempt: int
    root: str  # the storage root the run's directories are under
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {key, kind, path, config}
    sweeps: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    axes: dict[str, Any] = field(default_factory=dict)  # the grid axes shared by every cell using the run
    upstream: dict[str, dict[str, Any]] = field(default_factory=dict)  # this run and its ancestors' ledger rows

    def write(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> "RunSpec":
        return cls(**json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class UpstreamRun:
    """The part of a ledger row (``ledger.RunRow``) a stage may read of itself and its ancestors; the driver
    writes exactly these fields into the spec (``run_stage._upstream_rows``)."""

    key: str
    kind: str
    label: str
    config: dict[str, Any]
    inputs: dict[str, str]
    status: str
    artifact_path: str | None


class EventFile:
    """Appends one JSON object per line to a run's events file; safe from several threads.

    Each line is written with a single ``write`` on a file opened for appending and closed at once, so
    a reader on another host (NFS close-to-open consistency) sees whole lines or nothing of the line.
    """

    def __init__(self, path: Path, upstream: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        self.upstream = upstream or {}
        self._lock = threading.Lock()

    def get_run(self, key: str) -> UpstreamRun | None:
        """The ledger row of this run or one of its ancestors, as the driver wrote it into the spec
        (stages/lineage.py walks a chain with it)."""
        row = self.upstream.get(key)
        return None if row is None else UpstreamRun(key=key, **row)

    def move_to(self, directory: Path) -> None:
        """The run directory was renamed: keep appending to the same file at its new place."""
        with self._lock:
            self.path = Path(directory) / self.path.name

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps({"ts": time.time(), **record}) + "\n"
        with self._lock, open(self.path, "a") as fh:
            fh.write(line)

    # the subset of the Ledger interface a stage process uses
    def log_metrics(self, key: str, step: int, values: dict[str, float]) -> None:
        self._append({"type": "metrics", "step": int(step), "values": values})

    def heartbeat(self, key: str) -> None:
        self._append({"type": "heartbeat"})

    def log_item_scores(self, key: str, benchmark: str, scores: dict[str, float]) -> None:
        self._append({"type": "item_scores", "benchmark": benchmark, "scores": scores})

    def event(self, kind: str, message: str, *, run_key: str | None = None) -> None:
        self._append({"type": "event", "kind": kind, "message": message})

    def started(self, attempt: int) -> None:
        self._append({"type": "started", "attempt": attempt, "host": socket.gethostname(), "pid": os.getpid()})

    def mark_done(self, key: str, artifact_path: str, *, log_path: str | None = None) -> None:
        self._append({"type": "done", "artifact_path": artifact_path, "log_path": log_path})

    def failed(self, message: str) -> None:
        self._append({"type": "failed", "error": message})

    def report_failed(self, key: str, message: str) -> None:
        self.failed(message)

    def for_thread(self) -> "EventFile":
        """Itself: appends are safe from several threads."""
        return self

    def close(self) -> None:
        """Nothing is held open between appends."""


def read_events(path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The complete lines of ``path`` after byte ``offset``, parsed, and the offset after the last one.

    A line still being written (no newline yet) is left for the next call. A file shorter than
    ``offset`` was replaced: it is read from the start.
    """
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    events = []
    for raw in data[:end].splitlines():
        if raw.strip():
            try:
                events.append(json.loads(raw))
            except ValueError:
                events.append({"type": "event", "kind": "garbled", "message": raw[:200].decode(errors="replace")})
    return events, offset + end


def ingest(ledger: Any, key: str, path: Path) -> list[dict[str, Any]]:
    """Take the new lines of a run's events file into the ledger; returns the terminal ones.

    Metrics, item scores, heartbeats, events and the new read offset are written in one transaction, so a driver
    killed in between takes nothing in twice. `done` and `failed` lines are returned for the executor
    to act on (it checks them against the process's exit code and the artifact's run.json).
    """
    events, offset = read_events(path, ledger.reports_offset(key))
    metrics: list[tuple[int, dict[str, float]]] = []
    item_scores: list[tuple[str, dict[str, float]]] = []
    notes: list[tuple[str, str]] = []
    beat = None
    terminal = []
    for ev in events:
        typ = ev.get("type")
        if typ == "metrics":
            metrics.append((int(ev["step"]), ev["values"]))
        elif typ == "item_scores":
            item_scores.append((ev["benchmark"], ev["scores"]))
        elif typ == "heartbeat":
            beat = ev.get("ts")
        elif typ == "started":
            notes.append(("started", f"attempt {ev.get('attempt')} started on {ev.get('host')} (pid {ev.get('pid')})"))
            beat = ev.get("ts")
        elif typ in ("done", "failed"):
            terminal.append(ev)
        else:
            notes.append((str(ev.get("kind", "event")), str(ev.get("message", ""))))
    if events:
        ledger.ingest_reports(key, offset, metrics=metrics, events=notes, heartbeat=beat, item_scores=item_scores)
    return terminal
