"""Where the local executor puts a run: a subprocess on this machine, N at a time, GPUs of its own
(harness/executors/placement.py). The scheduling loop is harness/executors/scheduler.py's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.harness.context import partial_dir
from prism_lab.harness.executors.placement import (
    GpuAllocator,
    die_with_parent,
    launch_command,
    placement_env,
    run_resources,
)
from prism_lab.harness.executors.scheduler import Outcome
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.plan import Plan, StageRun


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


@dataclass
class _Process:
    proc: subprocess.Popen
    gpu_ids: list[str]


class LocalLauncher:
    """Subprocesses on this machine: at most ``workers`` at once, each with the GPUs it asks for."""

    def __init__(self, root: Path, *, workers: int = 1, gpus: list[str] | None = None, share_gpus: bool = False,
                 poll_seconds: float = 0.2) -> None:
        """``gpus``: the GPU ids runs may be given (None: every GPU nvidia-smi lists, looked up only
        when a run asks for GPUs); ``share_gpus``: let runs share GPUs instead of queueing."""
        self.root = Path(root)
        self.workers = max(1, workers)
        self.gpus = gpus
        self.share_gpus = share_gpus
        self.poll_seconds = poll_seconds
        self.running = 0
        self.pool = GpuAllocator([], share=share_gpus)

    def open(self, plan: Plan, targets: list[str]) -> None:
        """The GPU pool, checked against every target run's ``resources.gpus`` before anything starts."""
        needs = {k: (run_resources(plan.runs[k].config) or None) for k in targets}
        pool = self.gpus
        if pool is None and any(r is not None and r.gpus for r in needs.values()):
            from prism_lab.harness.devices import detect_gpus

            pool = [g.id for g in detect_gpus()]
        self.pool = GpuAllocator(pool or [], share=self.share_gpus)
        for k, r in needs.items():
            if r is not None:
                self.pool.check(plan.runs[k].label, r.gpus)

    def adopt(self, ledger: Ledger, targets: list[str], is_stale: Any) -> dict[str, Any]:
        return {}  # a dead executor's subprocesses died with it (PR_SET_PDEATHSIG)

    def env_for(self, res: Any, placement: list[str]) -> dict[str, str]:
        """The environment of a run with resources ``res`` given the GPUs ``placement``: its own GPUs, and none
        for a run that asks for none whenever this executor hands GPUs out (named with ``--gpus`` /
        CUDA_VISIBLE_DEVICES, or found because some run asks for GPUs), so it cannot land on another run's."""
        processes = res.processes if res is not None else 1
        return stage_env(placement_env(os.environ, res, placement, bool(self.pool.pool)), self.workers * processes)

    def can_place(self, run: StageRun) -> list[str] | None:
        if self.running >= self.workers:
            return None
        res = run_resources(run.config)
        return self.pool.take(res.gpus if res is not None else 0)

    def unplace(self, placement: list[str]) -> None:
        self.pool.release(placement)

    def launch(self, ledger: Ledger, key: str, run: StageRun, placement: list[str]) -> _Process:
        work = partial_dir(self.root, run.kind, key)
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / "stage.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it until it exits
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt on {socket.gethostname()} =====\n".encode())
        log.flush()
        res = run_resources(run.config or {})
        processes = res.processes if res is not None else 1
        env = self.env_for(res, placement)
        proc = subprocess.Popen(
            launch_command(self.root, key, processes), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, preexec_fn=die_with_parent if processes > 1 else None,
        )
        log.close()
        ledger.set_process(key, pid=proc.pid, log_path=str(log_path))
        self.running += 1
        return _Process(proc, placement)

    def poll(self, ledger: Ledger, key: str, handle: _Process) -> Outcome | None:
        """The stage process records its own outcome in the ledger; a process that died without doing so
        fails with its exit status."""
        code = handle.proc.poll()
        if code is None:
            return None
        self.running -= 1
        self.pool.release(handle.gpu_ids)
        row = ledger.get_run(key)
        if code == 0 and row is not None and row.status == "done":
            return Outcome(done=True)
        log = row.log_path if row is not None else None
        return Outcome(done=False, error=f"{exit_description(code)}; see {log}")

    def wait(self, handles: list[Any], seconds: float) -> None:
        time.sleep(seconds)

    def cancel(self, ledger: Ledger, handles: dict[str, Any]) -> None:
        """Ctrl-C: kill this executor's stage processes; a run that did not finish becomes pending."""
        for handle in handles.values():
            if handle.proc.poll() is None:
                handle.proc.kill()
        for key, handle in handles.items():
            try:
                handle.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            if ledger.set_status(key, "pending", error="cancelled", only_if=("running",)):
                ledger.event("cancelled", "interrupted: its stage process was killed; the run is pending", run_key=key)
        handles.clear()
