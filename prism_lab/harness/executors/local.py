"""Run a plan's pending stage runs on this machine: one subprocess per run, N at a time, in
dependency order. Re-running resumes: done runs are skipped, runs left `running` by a dead process are
restarted, failed runs are retried (unless told not to), and a failure blocks only its dependents."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from prism_lab.harness.context import partial_dir
from prism_lab.harness.ledger import Ledger, RunRow, run_is_stale
from prism_lab.harness.plan import Plan
from prism_lab.harness.executors.placement import (
    GpuAllocator,
    die_with_parent,
    launch_command,
    placement_env,
    run_resources,
)
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


#: Variables that size the CPU thread pools of torch (OpenMP) and the BLAS libraries.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """CPU threads each stage process gets when ``workers`` run at once: the cores shared out evenly.

    Without this every process sizes its pools to all cores, and with 2 workers on 2 cores the
    OpenMP barriers wait on descheduled threads (measured: the two toy SFT runs were about 10x slower).
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, workers))


def _user_pool_size(base: Mapping[str, str]) -> str | None:
    """The smallest positive thread-pool size the user set in ``base``, or None when none is set."""
    sizes = [int(v) for v in (base.get(var, "").strip() for var in THREAD_ENV_VARS) if v.isdigit() and int(v) > 0]
    return str(min(sizes)) if sizes else None


def stage_env(base: Mapping[str, str], workers: int, cpus: int | None = None) -> dict[str, str]:
    """The environment of a stage process: ``base`` plus thread-pool sizes for this worker count.

    A pool size the user set in ``base`` is kept, and it also sizes the pools they left unset: with only
    ``OMP_NUM_THREADS=1`` set, a BLAS pool sized to all cores would oversubscribe them as surely as an OpenMP one
    (measured: two sweeps side by side on 2 cores, each run with OpenMP at 1 and MKL at 2, trained 5-7x slower).
    A stage config's ``threads`` still wins.
    """
    env = dict(base, PYTHONUNBUFFERED="1")
    n = _user_pool_size(base) or str(threads_per_worker(workers, cpus))
    for var in THREAD_ENV_VARS:
        env.setdefault(var, n)
    return env


def exit_description(returncode: int) -> str:
    """One line for a stage process's exit status: the signal's name when a signal killed it (a SIGKILLed
    rank's torchrun agent exits 1 itself; its log names the rank)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"stage process killed by {name}"
    return f"stage process exited with code {returncode}"


def print_failure(console: Console, label: str, key: str, error: str) -> None:
    """`failed LABEL (KEY): ERROR`; the label and the error are foreign text (a stage's exception, gloo's
    `[/__w/pytorch/...]`), never read as Rich markup."""
    console.print(f"[red]failed[/red] {escape(label)} ({key[:12]}): {escape(error)}", highlight=False)


class LocalExecutor:
    def __init__(self, root: Path, *, workers: int = 1, retry_failed: bool = True, stale_after: float = 120.0,
                 poll_seconds: float = 0.2, console: Console | None = None, show_progress: bool = True,
                 gpus: list[str] | None = None, share_gpus: bool = False) -> None:
        """``gpus``: the GPU ids runs may be given (None: every GPU nvidia-smi lists, looked up only
        when a run asks for GPUs); ``share_gpus``: let runs share GPUs instead of queueing."""
        self.root = Path(root)
        self.gpus = gpus
        self.share_gpus = share_gpus
        self.workers = max(1, workers)
        self.retry_failed = retry_failed
        self.stale_after = stale_after
        self.poll = poll_seconds
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.host = socket.gethostname()

    # ---- helpers ------------------------------------------------------------------------------------
    def _is_stale(self, row: RunRow) -> bool:
        return run_is_stale(row, host=self.host, stale_after=self.stale_after)

    def _reset_for_this_invocation(self, ledger: Ledger, keys: list[str], summary: ExecutionSummary) -> None:
        rows = ledger.get_runs(keys)
        for key in keys:
            row = rows[key]
            if row.status == "running" and self._is_stale(row):
                if ledger.set_status(key, "pending", error=None, only_if=("running",)):
                    ledger.event("restarted", f"stale run (pid {row.pid}, owner {row.owner_pid}) restarted", run_key=key)
                    summary.restarted.append(key)
            elif row.status == "blocked" or (row.status == "failed" and self.retry_failed):
                ledger.set_status(key, "pending", error=row.error, only_if=(row.status,))

    def _allocator(self, plan: Plan, targets: list[str]) -> GpuAllocator:
        """The GPU pool, checked against every target run's ``resources.gpus`` before anything starts."""
        needs = {k: (run_resources(plan.runs[k].config) or None) for k in targets}
        pool = self.gpus
        if pool is None and any(r is not None and r.gpus for r in needs.values()):
            from prism_lab.harness.devices import detect_gpus

            pool = [g.id for g in detect_gpus()]
        alloc = GpuAllocator(pool or [], share=self.share_gpus)
        for k, r in needs.items():
            if r is not None:
                alloc.check(plan.runs[k].label, r.gpus)
        return alloc

    def _spawn(self, ledger: Ledger, key: str, kind: str, config: dict | None = None,
               gpu_ids: list[str] | None = None) -> subprocess.Popen:
        work = partial_dir(self.root, kind, key)
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / "stage.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt on {self.host} =====\n".encode())
        log.flush()
        res = run_resources(config or {})
        processes = res.processes if res is not None else 1
        env = stage_env(placement_env(os.environ, res, gpu_ids or [], self.gpus is not None),
                        self.workers * processes)
        proc = subprocess.Popen(
            launch_command(self.root, key, processes), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent if processes > 1 else None,
        )
        log.close()
        ledger.set_process(key, pid=proc.pid, log_path=str(log_path))
        return proc

    def _block_dependents(self, ledger: Ledger, plan: Plan, failed_key: str, targets: set[str],
                          summary: ExecutionSummary) -> None:
        deps = plan.dependents()
        stack = list(deps.get(failed_key, []))
        label = plan.runs[failed_key].label
        while stack:
            key = stack.pop()
            if key not in targets:
                continue
            if ledger.set_status(key, "blocked", error=f"blocked by failed {label} ({failed_key[:12]})",
                                 only_if=("pending",)):
                summary.blocked.append(key)
            stack.extend(deps.get(key, []))

    def _ready(self, ledger: Ledger, plan: Plan, key: str, rows: dict[str, RunRow], targets: set[str],
               summary: ExecutionSummary, unavailable_kinds: set[str]) -> bool:
        """Whether pending run ``key`` can start now: every input done (a run outside ``rows`` counts as done)
        and its kind installed. A failed or blocked input blocks the run and everything after it; a kind
        this installation lacks is recorded in ``summary.unavailable``."""
        run = plan.runs[key]
        failed = [d for d in run.inputs.values() if d in rows and rows[d].status in ("failed", "blocked")]
        if failed:
            self._block_dependents(ledger, plan, failed[0], targets, summary)
            return False
        if not all(rows[d].status == "done" for d in run.inputs.values() if d in rows):
            return False
        if run.kind in unavailable_kinds:
            if key not in summary.unavailable:
                summary.unavailable.append(key)
            return False
        return True

    # ---- main loop ----------------------------------------------------------------------------------
    def run(self, plan: Plan, *, kinds: set[str] | None = None) -> ExecutionSummary:
        summary = ExecutionSummary()
        targets = select_runs(plan, kinds)
        gpus = self._allocator(plan, targets)  # a run that can never get its GPUs fails here, before any write
        held: dict[str, list[str]] = {}
        ledger = Ledger(self.root)
        ledger.record_plan(plan)
        target_set = set(targets)
        self._reset_for_this_invocation(ledger, targets, summary)
        rows = ledger.get_runs(targets)
        summary.skipped = [k for k in targets if rows[k].status == "done"]
        unavailable_kinds = {r.kind for r in plan.runs.values() if not STAGE_KINDS.get(r.kind).is_available()}
        active: dict[str, subprocess.Popen] = {}
        me = os.getpid()
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.console, disable=not self.show_progress,
                            transient=False)
        with progress:
            overall = progress.add_task(f"sweep {escape(plan.grid.name)}", total=len(targets),
                                        completed=len(summary.skipped))
            tasks: dict[str, int] = {}
            while True:
                rows = ledger.get_runs(targets)
                # reap finished children
                for key, proc in list(active.items()):
                    if proc.poll() is None:
                        continue
                    del active[key]
                    gpus.release(held.pop(key, []))
                    progress.remove_task(tasks.pop(key))
                    row = ledger.get_run(key)
                    if proc.returncode == 0 and row is not None and row.status == "done":
                        summary.done.append(key)
                        progress.advance(overall)
                    else:
                        if row is not None and row.status == "running":
                            ledger.set_status(key, "failed", error=f"{exit_description(proc.returncode)}; see {row.log_path}",
                                              only_if=("running",))
                        summary.failed.append(key)
                        err = (ledger.get_run(key).error or "") if ledger.get_run(key) else ""
                        print_failure(self.console, plan.runs[key].label, key, err)
                        self._block_dependents(ledger, plan, key, target_set, summary)
                    rows = ledger.get_runs(targets)
                # launch ready runs
                waiting_on_others = False
                for key in targets:
                    if len(active) >= self.workers:
                        break
                    row = rows[key]
                    if key in active:
                        continue
                    if row.status == "running":
                        if self._is_stale(row) and ledger.set_status(key, "pending", only_if=("running",)):
                            summary.restarted.append(key)
                        else:
                            waiting_on_others = True
                        continue
                    if row.status != "pending":
                        continue
                    run = plan.runs[key]
                    if not self._ready(ledger, plan, key, rows, target_set, summary, unavailable_kinds):
                        continue
                    res = run_resources(run.config)
                    ids = gpus.take(res.gpus if res is not None else 0)
                    if ids is None:  # its GPUs are busy: it waits for a run to finish
                        continue
                    if not ledger.claim(key, owner_pid=me):
                        gpus.release(ids)
                        waiting_on_others = True
                        continue
                    held[key] = ids
                    active[key] = self._spawn(ledger, key, run.kind, run.config, ids)
                    tasks[key] = progress.add_task(f"  {escape(run.label)}", total=None)
                if not active and not waiting_on_others:
                    break
                time.sleep(self.poll)
        summary.blocked = [k for k in dict.fromkeys(summary.blocked)]
        ledger.close()
        return summary
