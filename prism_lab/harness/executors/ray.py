"""Run a plan's stage runs on a Ray cluster, with this process (the driver) as the only ledger writer.

Each stage run is a named, detached Ray actor (harness/executors/ray_actor.py) that requests the run's
CPUs and GPUs; one actor's request is always placed on a single node, so a run's GPUs are on one machine.
The actor starts ``python -m prism_lab.harness.run_stage --spec`` as a subprocess, under a keeper that takes
every process of the stage down with the actor (stage_group.py); the stage process reads
its run from spec.json and appends its reports to events.jsonl in the run directory, on the shared
storage root, and the driver takes them into the ledger (harness/run_reports.py). The ledger itself stays
on the driver's disk.

The scheduling loop is both executors' (harness/executors/scheduler.py: dependency order, stale runs
restarted, failed runs retried on the next invocation, a failure blocks only its dependents); this module is
the :class:`RayLauncher` it drives. Parallelism is bounded by the cluster.
Faults: a rerun after the driver was killed re-attaches to the actors still alive (found by name) and
restarts the others; a run whose Ray worker or node dies is retried up to ``max_retries`` times, then
failed with its dependents blocked; Ctrl-C kills this driver's actors and leaves their runs pending.
Before the first run, the driver checks that every node runs its prism-lab code (node_code.py), and passes
the stage processes the environment variables forwarded_env.py lists.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import PrismError
from prism_lab.harness.context import artifact_dir, partial_dir
from prism_lab.harness.executors.forwarded_env import forwarded_env
from prism_lab.harness.executors.local import THREAD_ENV_VARS
from prism_lab.harness.executors.placement import run_resources
from prism_lab.harness.executors.ray_address import address_from, check_address
from prism_lab.harness.executors.scheduler import Outcome
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.plan import Plan, StageRun
from prism_lab.harness.run_reports import EVENTS_FILE, SPEC_FILE, ingest
from prism_lab.harness.run_stage import complete_run_json, spec_from_ledger

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
            if address:  # a cluster's nodes may run another checkout; a private instance is this machine
                from prism_lab.harness.executors.node_code import check_nodes

                try:
                    check_nodes(ray)  # before the first run: every node runs this driver's prism-lab
                except PrismError:
                    ray.shutdown()  # a later connect (another tune thread) checks again instead of going on
                    raise
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


class RayLauncher:
    """Each stage run in a named, detached Ray actor (see the module doc)."""

    def __init__(self, root: Path, *, address: str | None = None, storage: Path | None = None, max_retries: int = 2,
                 poll_seconds: float = 0.5) -> None:
        self.address = address
        self.storage = Path(storage or root).resolve()
        self.max_retries = max(0, max_retries)
        self.poll_seconds = poll_seconds
        self.namespace = namespace_for(self.storage)
        self.lost: dict[str, int] = {}  # run key -> Ray workers lost by this invocation

    def open(self, plan: Plan, targets: list[str]) -> None:
        self.ray = connect(self.address, self.namespace)

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

    def can_place(self, run: StageRun) -> tuple:
        return ()  # Ray places it: an actor waits in Ray's queue until a node has its resources

    def unplace(self, placement: tuple) -> None:
        pass

    def launch(self, ledger: Ledger, key: str, run: StageRun, placement: tuple = ()) -> _Attempt:
        spec = spec_from_ledger(ledger, self.storage, key)
        res = stage_resources(spec.config)
        self._check_feasible(res, spec.label)
        work = partial_dir(self.storage, run.kind, key)
        work.mkdir(parents=True, exist_ok=True)
        spec.write(work / SPEC_FILE)
        env = forwarded_env(os.environ)  # the driver's settings (executors/forwarded_env.py), not the node's
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
        return _Attempt(handle, handle.run.remote(), run.kind)

    def adopt(self, ledger: Ledger, targets: list[str], is_stale: Any) -> dict[str, _Attempt]:
        """Runs left `running` by a dead driver whose actor is still alive: take them over."""
        adopted = {}
        for key, row in ledger.get_runs(targets).items():
            if row.status != "running" or not is_stale(row):
                continue
            try:
                handle = self.ray.get_actor(key)
            except ValueError:
                continue  # gone with its worker: the executor restarts it
            ledger.adopt(key, owner_pid=os.getpid())
            ledger.event("reattached", f"driver pid {row.owner_pid} is gone; its Ray actor is alive", run_key=key)
            adopted[key] = _Attempt(handle, handle.run.remote(), row.kind)
        return adopted

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

    def poll(self, ledger: Ledger, key: str, att: _Attempt) -> Outcome | None:
        """Take the run's new reports in (live metrics, heartbeats); once its actor returned, its outcome:
        done when its run.json is complete, started again when its worker was lost and retries are left."""
        terminal = ingest(ledger, key, self._events(att.kind, key))
        ready, _ = self.ray.wait([att.ref], num_returns=1, timeout=0)
        if not ready:
            return None
        code, lost, ray_error = self._outcome(att)
        terminal += ingest(ledger, key, self._events(att.kind, key))
        self._kill(key)
        row = ledger.get_run(key)
        final = artifact_dir(self.storage, att.kind, key)
        if lost is not None:
            return self._retry(ledger, key, att, lost, row.status == "running")
        if code == 0 and complete_run_json(final, key):
            ledger.mark_done(key, str(final), log_path=str(final / "stage.log"))
            return Outcome(done=True)
        failed = [ev.get("error") for ev in terminal if ev.get("type") == "failed"]
        return Outcome(done=False, error=ray_error or (failed[-1] if failed else None) or (
            row.error if row.status == "failed" else None) or f"stage process exited with code {code}; see {row.log_path}")

    def _retry(self, ledger: Ledger, key: str, att: _Attempt, lost: str, running: bool) -> Outcome:
        """A lost Ray worker: start the run again, up to ``max_retries`` times per invocation."""
        self.lost[key] = self.lost.get(key, 0) + 1
        error = f"Ray worker lost {self.lost[key]} time(s), more than --worker-retries {self.max_retries}: {lost}"
        if self.lost[key] <= self.max_retries and running:
            ledger.event("retried", f"Ray worker lost ({lost}); retry {self.lost[key]} of {self.max_retries}",
                         run_key=key)
            ledger.claim(key, owner_pid=os.getpid(), allowed=("running",))
            try:
                # launch() reads the run's spec from the ledger; of the StageRun it needs only the kind
                run = StageRun(key=key, kind=att.kind, label=ledger.get_run(key).label, config={}, inputs={})
                return Outcome(done=False, handle=self.launch(ledger, key, run))
            except PrismError as exc:  # e.g. the node it needs is gone
                error = f"Ray worker lost ({lost}); cannot retry: {exc}"
        return Outcome(done=False, error=error)

    def wait(self, handles: list[_Attempt], seconds: float) -> None:
        if handles:
            self.ray.wait([a.ref for a in handles], num_returns=1, timeout=seconds)
        else:
            time.sleep(seconds)

    def cancel(self, ledger: Ledger, active: dict[str, _Attempt]) -> None:
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
