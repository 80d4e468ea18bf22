"""Run a plan's stage runs on a Ray cluster, with this process (the driver) as the only ledger writer.

Each stage run is a named, detached Ray actor (harness/executors/ray_actor.py) that requests the run's
CPUs and GPUs; one actor's request is always placed on a single node, so a run's GPUs are on one machine.
The actor starts ``python -m prism_lab.harness.run_stage --spec`` as a subprocess; that process reads
its run from spec.json and appends its reports to events.jsonl in the run directory, on the shared
storage root, and the driver takes them into the ledger (harness/run_reports.py). The ledger itself stays
on the driver's disk.

Scheduling rules are the local executor's (dependency order, stale runs restarted, failed runs retried on
the next invocation, a failure blocks only its dependents); parallelism is bounded by the cluster.
Faults: a rerun after the driver was killed re-attaches to the actors still alive (found by name) and
restarts the others; a run whose Ray worker or node dies is retried up to ``max_retries`` times, then
failed with its dependents blocked; Ctrl-C kills this driver's actors and leaves their runs pending.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from prism_lab.errors import PrismError
from prism_lab.harness.context import artifact_dir, partial_dir
from prism_lab.harness.executors.local import THREAD_ENV_VARS, ExecutionSummary, LocalExecutor, select_runs
from prism_lab.harness.executors.placement import run_resources
from prism_lab.harness.executors.ray_address import address_from, check_address
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.plan import Plan
from prism_lab.harness.run_reports import EVENTS_FILE, SPEC_FILE, ingest
from prism_lab.harness.run_stage import complete_run_json, spec_from_ledger
from prism_lab.harness.stage_kinds import STAGE_KINDS

#: Environment variables of the driver that every stage process gets (plugins, W&B mode and project, ...,
#: and the user's hub-kernels switch, which prism_lab/__init__.py otherwise sets off).
FORWARDED_ENV_PREFIXES = ("PRISM_LAB_", "WANDB_", "USE_HUB_KERNELS")


@dataclass(frozen=True)
class RunResources:
    processes: int = 1
    gpus: int = 0
    cpus: int = 1


def stage_resources(config: Mapping[str, Any]) -> RunResources:
    """What one stage run asks Ray for, from its config's ``resources`` (config/resources.py); kinds
    without the field get one process, one CPU and no GPU."""
    res = run_resources(config)
    if res is None:
        return RunResources()
    return RunResources(processes=res.processes, gpus=res.gpus, cpus=res.cpus or res.processes)


def stage_args(spec_path: Path, res: RunResources) -> list[str]:
    """Interpreter arguments of the stage process (torchrun for several processes)."""
    stage = ["-m", "prism_lab.harness.run_stage", "--spec", str(spec_path)]
    if res.processes == 1:
        return stage
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={res.processes}", *stage]


def namespace_for(storage: Path) -> str:
    """One Ray namespace per storage root: actor names (run keys) never meet another root's."""
    return "prism-lab-" + hashlib.sha256(str(Path(storage).resolve()).encode()).hexdigest()[:12]


_connect_lock = threading.Lock()


def connect(address: str | None, namespace: str) -> Any:
    """``ray.init`` once per process (tune runs several executors in threads of one driver)."""
    try:
        import ray
    except ImportError:
        raise PrismError("--executor ray needs the `ray` extra: pip install -e \".[ray]\"") from None
    address, option = address_from(address)
    with _connect_lock:
        if not ray.is_initialized():
            check_address(address, option=option)  # one line for every way the address fails, not ray.init's retries
            import logging

            try:
                ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level=logging.WARNING,
                         **({} if address else {"include_dashboard": False}))
            except (ConnectionError, ray.exceptions.RayError) as exc:  # e.g. the head went away after the check
                raise PrismError(f"{option} {address or '(a private Ray instance)'}: cannot connect to Ray: "
                                 f"{' '.join(str(exc).split())[:300]}") from None
        elif ray.get_runtime_context().namespace != namespace:
            raise PrismError("this process is already connected to Ray with another namespace (storage root)")
    return ray


_ACTOR: Any = None


def _actor_class(ray: Any) -> Any:
    global _ACTOR
    if _ACTOR is None:
        from prism_lab.harness.executors.ray_actor import StageActor

        _ACTOR = ray.remote(StageActor)
    return _ACTOR


@dataclass
class _Attempt:
    handle: Any
    ref: Any
    kind: str


class RayExecutor(LocalExecutor):
    """The local executor's scheduling rules with each stage run in a Ray actor (see the module doc)."""

    def __init__(self, root: Path, *, address: str | None = None, storage: Path | None = None, max_retries: int = 2,
                 retry_failed: bool = True, stale_after: float = 120.0, poll_seconds: float = 0.5,
                 console: Console | None = None, show_progress: bool = True) -> None:
        super().__init__(root, retry_failed=retry_failed, stale_after=stale_after, poll_seconds=poll_seconds,
                         console=console, show_progress=show_progress)
        self.address = address
        self.storage = Path(storage or root).resolve()
        self.max_retries = max(0, max_retries)
        self.namespace = namespace_for(self.storage)
        self.lost: dict[str, int] = {}  # run key -> Ray workers lost by this invocation

    # ---- one actor per attempt ------------------------------------------------------------------------
    def _events(self, kind: str, key: str) -> Path:
        final = artifact_dir(self.storage, kind, key)
        return (final if final.exists() else partial_dir(self.storage, kind, key)) / EVENTS_FILE

    def _kill(self, name: str, *, wait: bool = False) -> None:
        """Kill the actor of that name, if any; with ``wait``, until its name is free for a new one."""
        try:
            self.ray.kill(self.ray.get_actor(name), no_restart=True)
        except ValueError:  # no actor of that name
            return
        for _ in range(100 if wait else 0):  # the name is released a moment after the kill
            try:
                self.ray.get_actor(name)
            except ValueError:
                return
            time.sleep(0.1)

    def _check_feasible(self, res: RunResources, label: str) -> None:
        nodes = [n["Resources"] for n in self.ray.nodes() if n.get("Alive")]
        if any(n.get("CPU", 0) >= res.cpus and n.get("GPU", 0) >= res.gpus for n in nodes):
            return
        best = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise PrismError(f"{label} needs {res.cpus} CPU(s) and {res.gpus} GPU(s) on one node; the largest node of "
                         f"the Ray cluster has {best.get('CPU', 0):g} CPU(s) and {best.get('GPU', 0):g} GPU(s)")

    def _launch(self, ledger: Ledger, key: str, kind: str) -> _Attempt:
        spec = spec_from_ledger(ledger, self.storage, key)
        res = stage_resources(spec.config)
        self._check_feasible(res, spec.label)
        work = partial_dir(self.storage, kind, key)
        work.mkdir(parents=True, exist_ok=True)
        spec.write(work / SPEC_FILE)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"
        for var in THREAD_ENV_VARS:
            env[var] = os.environ.get(var) or str(max(1, res.cpus // res.processes))
        self._kill(key, wait=True)  # a lost attempt, or a leftover of a driver killed after its run ended
        actor = _actor_class(self.ray).options(
            name=key, lifetime="detached", num_cpus=res.cpus, num_gpus=res.gpus, max_concurrency=4, max_restarts=0)
        handle = actor.remote(stage_args(work / SPEC_FILE, res), env, str(work / "stage.log"))
        ledger.set_process(key, pid=None, log_path=str(work / "stage.log"))
        ledger.event("submitted", f"Ray actor {key[:12]} ({res.cpus} CPU, {res.gpus} GPU), attempt {spec.attempt}",
                     run_key=key)
        return _Attempt(handle, handle.run.remote(), kind)

    def _attach_survivors(self, ledger: Ledger, targets: list[str], active: dict[str, _Attempt]) -> None:
        """Runs left `running` by a dead driver whose actor is still alive: take them over."""
        for key, row in ledger.get_runs(targets).items():
            if row.status != "running" or not self._is_stale(row):
                continue
            try:
                handle = self.ray.get_actor(key)
            except ValueError:
                continue  # gone with its worker: _reset_for_this_invocation restarts it
            ledger.adopt(key, owner_pid=os.getpid())
            ledger.event("reattached", f"driver pid {row.owner_pid} is gone; its Ray actor is alive", run_key=key)
            active[key] = _Attempt(handle, handle.run.remote(), row.kind)

    # ---- outcomes -------------------------------------------------------------------------------------
    def _outcome(self, att: _Attempt) -> tuple[int | None, str | None, str | None]:
        """(exit code, lost-worker reason, other Ray error) of a finished attempt."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, NodeDiedError, RayError, WorkerCrashedError

        try:
            return int(self.ray.get(att.ref)), None, None
        except (ActorDiedError, ActorUnavailableError, NodeDiedError, WorkerCrashedError) as exc:
            return None, " ".join(str(exc).split())[:300], None
        except RayError as exc:
            return None, None, " ".join(str(exc).split())[:300]

    def _finish(self, ledger: Ledger, plan: Plan, key: str, active: dict[str, _Attempt], targets: set[str],
                summary: ExecutionSummary) -> bool:
        """Record a finished attempt; True when the run is over (done or failed), False when relaunched."""
        att = active.pop(key)
        code, lost, ray_error = self._outcome(att)
        terminal = ingest(ledger, key, self._events(att.kind, key))
        self._kill(key)
        row = ledger.get_run(key)
        final = artifact_dir(self.storage, att.kind, key)
        if lost is not None:
            self.lost[key] = self.lost.get(key, 0) + 1
            error = f"Ray worker lost {self.lost[key]} time(s), more than --worker-retries {self.max_retries}: {lost}"
            if self.lost[key] <= self.max_retries and row.status == "running":
                ledger.event("retried", f"Ray worker lost ({lost}); retry {self.lost[key]} of {self.max_retries}",
                             run_key=key)
                ledger.claim(key, owner_pid=os.getpid(), allowed=("running",))
                try:
                    active[key] = self._launch(ledger, key, att.kind)
                    summary.restarted.append(key)
                    return False
                except PrismError as exc:  # e.g. the node it needs is gone
                    error = f"Ray worker lost ({lost}); cannot retry: {exc}"
        elif code == 0 and complete_run_json(final, key):
            ledger.mark_done(key, str(final), log_path=str(final / "stage.log"))
            summary.done.append(key)
            if self.show_progress:
                self.console.print(f"[green]done[/green] {escape(plan.runs[key].label)} ({key[:12]})")
            return True
        else:
            failed = [ev.get("error") for ev in terminal if ev.get("type") == "failed"]
            error = ray_error or (failed[-1] if failed else None) or (
                row.error if row.status == "failed" else None) or \
                f"stage process exited with code {code}; see {row.log_path}"
        ledger.set_status(key, "failed", error=error, only_if=("running",))
        ledger.event("failed", error, run_key=key)
        summary.failed.append(key)
        self.console.print(f"[red]failed[/red] {escape(plan.runs[key].label)} ({key[:12]}): {escape(str(error))}")
        self._block_dependents(ledger, plan, key, targets, summary)
        return True

    def _cancel(self, ledger: Ledger, active: dict[str, _Attempt]) -> None:
        """Ctrl-C: kill this driver's actors (their stage processes die with them); runs become pending."""
        for key in active:
            try:
                self.ray.kill(active[key].handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for key, att in active.items():
            ingest(ledger, key, self._events(att.kind, key))
            final = artifact_dir(self.storage, att.kind, key)
            if complete_run_json(final, key):
                ledger.mark_done(key, str(final), log_path=str(final / "stage.log"))
            elif ledger.set_status(key, "pending", error="cancelled", only_if=("running",)):
                ledger.event("cancelled", "interrupted: its Ray actor was killed; the run is pending", run_key=key)
        active.clear()

    # ---- main loop --------------------------------------------------------------------------------------
    def run(self, plan: Plan, *, kinds: set[str] | None = None) -> ExecutionSummary:
        self.ray = connect(self.address, self.namespace)
        summary = ExecutionSummary()
        ledger = Ledger(self.root)
        active: dict[str, _Attempt] = {}
        restore = None
        if threading.current_thread() is threading.main_thread():
            restore = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cancels like Ctrl-C
        try:
            ledger.record_plan(plan)
            targets = select_runs(plan, kinds)
            self._attach_survivors(ledger, targets, active)
            self._reset_for_this_invocation(ledger, targets, summary)
            summary.skipped = [k for k, r in ledger.get_runs(targets).items() if r.status == "done"]
            self._loop(ledger, plan, targets, active, summary)
        except BaseException:
            self._cancel(ledger, active)
            raise
        finally:
            if restore is not None:
                signal.signal(signal.SIGTERM, restore)
            ledger.close()
        summary.blocked = list(dict.fromkeys(summary.blocked))
        return summary

    def _loop(self, ledger: Ledger, plan: Plan, targets: list[str], active: dict[str, _Attempt],
              summary: ExecutionSummary) -> None:
        target_set = set(targets)
        unavailable = {r.kind for r in plan.runs.values() if not STAGE_KINDS.get(r.kind).is_available()}
        me = os.getpid()
        while True:
            for key, att in list(active.items()):  # live metrics and heartbeats
                ingest(ledger, key, self._events(att.kind, key))
            done_refs, _ = self.ray.wait([a.ref for a in active.values()], num_returns=len(active), timeout=0) \
                if active else ([], [])
            for key in [k for k, a in list(active.items()) if a.ref in done_refs]:
                self._finish(ledger, plan, key, active, target_set, summary)
            rows = ledger.get_runs(targets)
            waiting = False
            for key in targets:
                row, run = rows[key], plan.runs[key]
                if key in active or row.status not in ("pending", "running"):
                    continue
                if row.status == "running":
                    if self._is_stale(row) and ledger.set_status(key, "pending", only_if=("running",)):
                        summary.restarted.append(key)
                    waiting = True
                    continue
                if not self._ready(ledger, plan, key, rows, target_set, summary, unavailable):
                    continue
                if not ledger.claim(key, owner_pid=me):
                    waiting = True
                    continue
                try:
                    active[key] = self._launch(ledger, key, run.kind)
                    if self.show_progress:
                        self.console.print(f"submitted {run.label} ({key[:12]}) to Ray", markup=False, highlight=False)
                except PrismError as exc:
                    ledger.set_status(key, "failed", error=str(exc), only_if=("running",))
                    summary.failed.append(key)
                    self.console.print(f"[red]failed[/red] {escape(run.label)} ({key[:12]}): {escape(str(exc))}")
                    self._block_dependents(ledger, plan, key, target_set, summary)
            if not active and not waiting:
                return
            if active:
                self.ray.wait([a.ref for a in active.values()], num_returns=1, timeout=self.poll)
            else:
                time.sleep(self.poll)
