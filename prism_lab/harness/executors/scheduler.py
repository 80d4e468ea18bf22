"""The one scheduling loop of both executors: run a plan's pending stage runs in dependency order.

Re-running resumes: done runs are skipped, runs left `running` by a dead executor are restarted, failed runs
are retried (unless told not to), and a failure blocks only its dependents. Ctrl-C (and SIGTERM, in the main
thread) cancels: the launcher stops this executor's runs, and they are left pending.

Where a run goes and how it is started is a :class:`Launcher`'s alone: ``local.py`` starts subprocesses on
this machine (N at a time, GPUs of their own), ``ray.py`` starts Ray actors on a cluster. The loop never
asks which one it has.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from prism_lab.errors import PrismError
from prism_lab.harness.ledger import Ledger, RunRow, run_is_stale
from prism_lab.harness.plan import Plan, StageRun
from prism_lab.harness.stage_kinds import STAGE_KINDS


@dataclass
class ExecutionSummary:
    done: list[str] = field(default_factory=list)  # keys finished by this invocation
    skipped: list[str] = field(default_factory=list)  # already done before
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # stage kind not implemented in this build
    restarted: list[str] = field(default_factory=list)  # stale `running` runs that were reset

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def select_runs(plan: Plan, kinds: set[str] | None) -> list[str]:
    """Runs to execute: all, or those of ``kinds`` whose every upstream run is also selectable."""
    if not kinds:
        return list(plan.runs)
    allowed = set(kinds) | {"data"}
    ok: dict[str, bool] = {}
    for key, run in plan.runs.items():  # topological order
        ok[key] = run.kind in allowed and all(ok.get(d, False) for d in run.inputs.values())
    return [k for k, v in ok.items() if v]


def print_failure(console: Console, label: str, key: str, error: str) -> None:
    """`failed LABEL (KEY): ERROR`; the label and the error are foreign text (a stage's exception, gloo's
    `[/__w/pytorch/...]`), never read as Rich markup."""
    console.print(f"[red]failed[/red] {escape(label)} ({key[:12]}): {escape(error)}", highlight=False)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as its launcher read it (it has recorded a done run in the ledger already).

    ``handle`` set: the launcher started the run again (a lost Ray worker) and the run goes on under it."""

    done: bool
    error: str | None = None  # why it failed (the ledger row's error wins when the stage recorded one)
    handle: Any = None


class Launcher(Protocol):
    """How runs are placed and started; everything else is the loop's."""

    poll_seconds: float

    def open(self, plan: Plan, targets: list[str]) -> None:
        """Before the ledger is touched: refuse a plan that can never be placed (PrismError), connect."""

    def adopt(self, ledger: Ledger, targets: list[str], is_stale: Any) -> dict[str, Any]:
        """Handles of `running` runs left by a dead executor that this launcher can take over, by key."""

    def can_place(self, run: StageRun) -> Any | None:
        """Where ``run`` would go now (a placement), or None when it must wait for a run to finish."""

    def unplace(self, placement: Any) -> None:
        """Give a placement back unused (the claim was lost, or the launch failed)."""

    def launch(self, ledger: Ledger, key: str, run: StageRun, placement: Any) -> Any:
        """Start the claimed run; a handle. PrismError: it cannot start (the run fails)."""

    def poll(self, ledger: Ledger, key: str, handle: Any) -> Outcome | None:
        """None while the run goes on; its outcome once it ended (its placement is free again)."""

    def wait(self, handles: list[Any], seconds: float) -> None:
        """Sleep up to ``seconds``, less when a run ends."""

    def cancel(self, ledger: Ledger, handles: dict[str, Any]) -> None:
        """Stop these runs (Ctrl-C); each is recorded done if it finished, else pending."""


class Executor:
    """Runs plans with one :class:`Launcher` (see the module doc)."""

    def __init__(self, root: Path, launcher: Launcher, *, retry_failed: bool = True, stale_after: float = 120.0,
                 console: Console | None = None, show_progress: bool = True) -> None:
        self.root = Path(root)
        self.launcher = launcher
        self.retry_failed = retry_failed
        self.stale_after = stale_after
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.host = socket.gethostname()

    def is_stale(self, row: RunRow) -> bool:
        return run_is_stale(row, host=self.host, stale_after=self.stale_after)

    def run(self, plan: Plan, *, kinds: set[str] | None = None) -> ExecutionSummary:
        summary = ExecutionSummary()
        targets = select_runs(plan, kinds)
        self.launcher.open(plan, targets)  # a run that can never be placed fails here, before any write
        ledger = Ledger(self.root)
        active: dict[str, Any] = {}
        restore = None
        if threading.current_thread() is threading.main_thread():
            restore = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cancels like Ctrl-C
        try:
            ledger.record_plan(plan)
            active.update(self.launcher.adopt(ledger, targets, self.is_stale))
            self._reset_for_this_invocation(ledger, targets, summary)
            summary.skipped = [k for k, r in ledger.get_runs(targets).items() if r.status == "done"]
            _Loop(self, ledger, plan, targets, active, summary).run()
        except BaseException:
            self.launcher.cancel(ledger, active)
            raise
        finally:
            if restore is not None:
                signal.signal(signal.SIGTERM, restore)
            ledger.close()
        summary.blocked = list(dict.fromkeys(summary.blocked))
        return summary

    def _reset_for_this_invocation(self, ledger: Ledger, keys: list[str], summary: ExecutionSummary) -> None:
        rows = ledger.get_runs(keys)
        for key in keys:
            row = rows[key]
            if row.status == "running" and self.is_stale(row):
                if ledger.set_status(key, "pending", error=None, only_if=("running",)):
                    ledger.event("restarted", f"stale run (pid {row.pid}, owner {row.owner_pid}) restarted", run_key=key)
                    summary.restarted.append(key)
            elif row.status == "blocked" or (row.status == "failed" and self.retry_failed):
                ledger.set_status(key, "pending", error=row.error, only_if=(row.status,))


class _Loop:
    """One invocation's loop: reap ended runs, start ready ones, wait; until nothing runs or can run."""

    def __init__(self, ex: Executor, ledger: Ledger, plan: Plan, targets: list[str], active: dict[str, Any],
                 summary: ExecutionSummary) -> None:
        self.ex, self.launcher, self.ledger, self.plan = ex, ex.launcher, ledger, plan
        self.targets, self.target_set, self.active, self.summary = targets, set(targets), active, summary
        self.unavailable = {r.kind for r in plan.runs.values() if not STAGE_KINDS.get(r.kind).is_available()}
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=ex.console, disable=not ex.show_progress, transient=False)
        self.tasks: dict[str, int] = {}

    def run(self) -> None:
        with self.progress:
            self.overall = self.progress.add_task(f"sweep {escape(self.plan.grid.name)}", total=len(self.targets),
                                                  completed=len(self.summary.skipped))
            for key in self.active:  # adopted from a dead executor
                self._show(key)
            while True:
                for key, handle in list(self.active.items()):
                    outcome = self.launcher.poll(self.ledger, key, handle)
                    if outcome is not None:
                        self._ended(key, outcome)
                waiting = self._start_ready()
                if not self.active and not waiting:
                    return
                self.launcher.wait(list(self.active.values()), self.launcher.poll_seconds)

    def _show(self, key: str) -> None:
        self.tasks[key] = self.progress.add_task(f"  {escape(self.plan.runs[key].label)}", total=None)

    def _ended(self, key: str, outcome: Outcome) -> None:
        if outcome.handle is not None:  # started again by its launcher
            self.active[key] = outcome.handle
            self.summary.restarted.append(key)
            return
        del self.active[key]
        self.progress.remove_task(self.tasks.pop(key))
        if outcome.done:
            self.summary.done.append(key)
            self.progress.advance(self.overall)
            return
        self._fail(key, outcome.error or "the stage process ended without a report")

    def _fail(self, key: str, error: str) -> None:
        """Record run ``key`` failed (unless its stage did already), say so, block its dependents."""
        if self.ledger.set_status(key, "failed", error=error, only_if=("running",)):
            self.ledger.event("failed", error, run_key=key)
        row = self.ledger.get_run(key)
        self.summary.failed.append(key)
        print_failure(self.ex.console, self.plan.runs[key].label, key, (row.error if row else None) or error)
        self._block_dependents(key)

    def _start_ready(self) -> bool:
        """Claim and launch every ready run that can be placed; True while runs wait on other executors."""
        rows = self.ledger.get_runs(self.targets)
        waiting = False
        for key in self.targets:
            row, run = rows[key], self.plan.runs[key]
            if key in self.active or row.status not in ("pending", "running"):
                continue
            if row.status == "running":  # another executor's, or left by a dead one
                if self.ex.is_stale(row) and self.ledger.set_status(key, "pending", only_if=("running",)):
                    self.summary.restarted.append(key)
                waiting = True
                continue
            if not self._ready(key, rows):
                continue
            placement = self.launcher.can_place(run)
            if placement is None:  # no room now: it waits for a run to finish
                continue
            if not self.ledger.claim(key, owner_pid=os.getpid()):
                self.launcher.unplace(placement)
                waiting = True
                continue
            try:
                self.active[key] = self.launcher.launch(self.ledger, key, run, placement)
            except PrismError as exc:
                self.launcher.unplace(placement)
                self._fail(key, str(exc))
                continue
            self._show(key)
        return waiting

    def _ready(self, key: str, rows: dict[str, RunRow]) -> bool:
        """Whether pending run ``key`` can start now: every input done (a run outside ``rows`` counts as done)
        and its kind installed. A failed or blocked input blocks the run and everything after it; a kind
        this installation lacks is recorded in ``summary.unavailable``."""
        run = self.plan.runs[key]
        failed = [d for d in run.inputs.values() if d in rows and rows[d].status in ("failed", "blocked")]
        if failed:
            self._block_dependents(failed[0])
            return False
        if not all(rows[d].status == "done" for d in run.inputs.values() if d in rows):
            return False
        if run.kind in self.unavailable:
            if key not in self.summary.unavailable:
                self.summary.unavailable.append(key)
            return False
        return True

    def _block_dependents(self, failed_key: str) -> None:
        deps = self.plan.dependents()
        stack = list(deps.get(failed_key, []))
        label = self.plan.runs[failed_key].label
        while stack:
            key = stack.pop()
            if key not in self.target_set:
                continue
            if self.ledger.set_status(key, "blocked", error=f"blocked by failed {label} ({failed_key[:12]})",
                                      only_if=("pending",)):
                self.summary.blocked.append(key)
            stack.extend(deps.get(key, []))
