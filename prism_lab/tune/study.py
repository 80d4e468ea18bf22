"""The ask-and-tell loop: every Optuna trial is one harness cell.

A trial's parameters are written into the base grid's stage configs; the resulting one-cell grid
(sweep ``<study>-trial-<n>``) is planned, recorded in the ledger and run by the local executor. Stage
runs are content-addressed, so the runs a trial shares with earlier trials (data, SFT, and any stage
whose config the parameters do not touch) are found done in the ledger and never run twice; several
tuner processes on one root claim runs atomically. The objective(s) are read from the ledger.

Pruning (single objective) is stage-granular: after the run of each ``pruning.report`` role finishes,
one intermediate value (step i = i-th report) is reported, and a trial the pruner rejects stops
before its next stage. Values inside a stage are not reported while it runs.

Robustness:
  * ``--trials N`` is the study's total of finished trials (COMPLETE + PRUNED): restarts and several
    processes on the same storage converge to N together. The decision to start a trial and the ask
    are made under a lock (a file lock next to a local SQLite/journal storage), so they never overshoot.
  * Every running trial records its worker (host, pid) and a heartbeat in its user attrs. A tuner
    that starts, or waits, marks RUNNING trials of dead workers (same host: the pid is gone; other
    hosts: no heartbeat for ``grace_period`` s) as FAIL and enqueues a retry with the same parameters
    (system attrs ``failed_trial``/``retry_history``, as Optuna's RetryHeartbeatStaleTrialCallback),
    up to ``max_retries``; the retry finds the killed trial's finished stage runs in the ledger.
    This works for every storage, including JournalStorage, which has no heartbeat in Optuna.
  * A trial whose stage fails is FAIL with the error in its user attrs, and retried the same way.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from prism_lab.errors import ConfigError, PrismError
from prism_lab.tune.space import ObjectiveSpec, ReportSpec, SearchSpace

WORKER_ATTR = "prism_lab:worker"  # {"host", "pid", "thread"}
HEARTBEAT_ATTR = "prism_lab:heartbeat"  # unix time, refreshed while the trial runs
SWEEP_ATTR = "prism_lab:sweep"
RUNS_ATTR = "prism_lab:runs"  # role -> run key
ERROR_ATTR = "prism_lab:error"
SPACE_ATTR = "prism_lab:space"  # study user attr: fingerprint and file of the search space

FINISHED_OK = ("COMPLETE", "PRUNED")


class StudyAborted(PrismError):
    """The study cannot go on (repeated failures, a stage kind missing from this build)."""


class TrialFailed(Exception):
    """A trial's stage run failed, or its objective metric is missing."""


class TrialInvalid(Exception):
    """The sampled parameters make a stage config invalid (e.g. top_k > num_experts)."""


# ---------------------------------------------------------------------------------------------------
# storage
@dataclass(frozen=True)
class StorageRef:
    """Where a study lives: ``sqlite`` (one file, one worker), ``journal`` (file, many workers) or
    ``rdb`` (PostgreSQL/MySQL URL, many workers on many hosts)."""

    kind: str
    url: str  # sqlite:///..., postgresql://..., or the journal file path
    path: Path | None = None  # local file, for sqlite and journal

    @property
    def dashboard(self) -> str:
        return f"optuna-dashboard {self.url if self.kind != 'journal' else self.path}"

    @property
    def parallel_ok(self) -> bool:
        return self.kind != "sqlite"


def resolve_storage(storage: str | None, *, root: Path, study: str, workers: int) -> StorageRef:
    """Parse ``--storage`` or choose the default under ``<root>/tune/<study>/``.

    Forms: ``sqlite:///path.db`` or ``path.db|.sqlite|.sqlite3``; ``journal:path`` or ``path.journal|.log``;
    any other ``scheme://`` URL is an Optuna RDB URL. Default: the study's existing storage file if there
    is one, else SQLite for one worker and a journal file for several.
    """
    if storage is None:
        base = root / "tune" / study
        db, journal = base / "study.db", base / "study.journal"
        if db.exists() and journal.exists():
            raise ConfigError(f"--storage: both {db} and {journal} exist; name the one to use")
        if db.exists():
            ref = StorageRef("sqlite", f"sqlite:///{db}", db)
        elif journal.exists() or workers > 1:
            ref = StorageRef("journal", str(journal), journal)
        else:
            ref = StorageRef("sqlite", f"sqlite:///{db}", db)
    elif storage.startswith("journal:"):
        p = Path(storage[len("journal:"):].removeprefix("//")).expanduser()
        ref = StorageRef("journal", str(p), p)
    elif storage.startswith("sqlite:///"):
        p = Path(storage[len("sqlite:///"):]).expanduser()
        ref = StorageRef("sqlite", f"sqlite:///{p}", p)
    elif "://" in storage:
        ref = StorageRef("rdb", storage)
    elif storage.endswith((".journal", ".log")):
        p = Path(storage).expanduser()
        ref = StorageRef("journal", str(p), p)
    elif storage.endswith((".db", ".sqlite", ".sqlite3")):
        p = Path(storage).expanduser()
        ref = StorageRef("sqlite", f"sqlite:///{p}", p)
    else:
        raise ConfigError(f"--storage: cannot tell the kind of {storage!r}; use sqlite:///study.db (one worker), "
                          "journal:study.journal (parallel workers on one file system) or an RDB URL "
                          "such as postgresql://user@host/db")
    if workers > 1 and not ref.parallel_ok:
        raise ConfigError(
            f"--workers {workers}: the study's storage {ref.url} is SQLite, which fails with 'database is "
            "locked' under concurrent writers; use --storage journal:<file> (or an RDB URL), or --workers 1"
        )
    return ref


def open_storage(ref: StorageRef) -> Any:
    import optuna

    if ref.path is not None:
        ref.path.parent.mkdir(parents=True, exist_ok=True)
    if ref.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        return optuna.storages.JournalStorage(
            JournalFileBackend(str(ref.path), lock_obj=JournalFileOpenLock(str(ref.path))))
    engine_kwargs = {"connect_args": {"timeout": 60}} if ref.kind == "sqlite" else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(ref.url, engine_kwargs=engine_kwargs)


class StudyLock:
    """Serialises 'decide whether to start a trial + ask + suggest' among threads and (for local file
    storages) processes. Remote RDB storages get the thread lock only: concurrent processes on
    different hosts may then overshoot ``--trials`` by at most one trial each."""

    def __init__(self, ref: StorageRef) -> None:
        self._thread_lock = threading.Lock()
        self._path = None if ref.path is None else ref.path.with_name(ref.path.name + ".tune-lock")

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._path is None:
                yield
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._path, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------
# samplers, pruners, study
def make_sampler(space: SearchSpace, seed: int | None) -> Any:
    import optuna

    kind = space.spec.sampler
    if kind == "auto":
        kind = "nsga2" if space.multi_objective else "tpe"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-argument warnings
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(space: SearchSpace) -> Any:
    import optuna

    p = space.spec.pruning
    if p is None or p.pruner == "none" or not p.report:
        return optuna.pruners.NopPruner()
    if p.pruner == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials)


def open_study(space: SearchSpace, ref: StorageRef, study_name: str, *, storage: Any = None) -> Any:
    """Create or load (load_if_exists) the study; refuse a study whose search space has changed."""
    import optuna

    storage = storage if storage is not None else open_storage(ref)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=space.directions,
                                    sampler=make_sampler(space, space.spec.seed), pruner=make_pruner(space),
                                    load_if_exists=True)
    except ValueError as exc:
        raise ConfigError(f"study {study_name!r} in {ref.url}: {exc}; use another --study name") from None
    existing = [d.name.lower() for d in study.directions]
    if existing != space.directions:
        raise ConfigError(f"study {study_name!r} in {ref.url} optimises {existing}, but {space.path} asks for "
                          f"{space.directions}; use another --study name")
    info = study.user_attrs.get(SPACE_ATTR)
    fp = space.fingerprint()
    if info is None:
        study.set_user_attr(SPACE_ATTR, {"fingerprint": fp, "file": str(space.path), "base": str(space.base.path),
                                         "cell": space.cell})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                study.set_metric_names([o.metric for o in space.objectives])
            except Exception:  # noqa: BLE001 - only cosmetics for optuna-dashboard
                pass
    elif info.get("fingerprint") != fp:
        raise ConfigError(
            f"{space.path}: the parameters, objectives or cell differ from those study {study_name!r} was started "
            f"with (from {info.get('file')}); a study's search space cannot change: use another --study name"
        )
    return study


# ---------------------------------------------------------------------------------------------------
# liveness and retries
def _pid_alive(pid: int) -> bool:
    from prism_lab.harness.ledger import pid_alive

    return pid_alive(pid)


def stale_reason(trial: Any, *, host: str, grace_period: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone, or None if it may still be alive."""
    now = time.time() if now is None else now
    worker = trial.user_attrs.get(WORKER_ATTR)
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if worker is None:
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        return None if now - started < grace_period else f"no worker recorded for {grace_period:.0f}s"
    if worker.get("host") == host:
        if worker.get("pid") == os.getpid():
            return None  # our own threads are alive while we are
        return None if _pid_alive(int(worker.get("pid", 0))) else f"worker pid {worker.get('pid')} on {host} is dead"
    last = float(beat) if beat is not None else 0.0
    if now - last > grace_period:
        return f"no heartbeat from {worker.get('host')} (pid {worker.get('pid')}) for {now - last:.0f}s"
    return None


def enqueue_retry(study: Any, trial: Any, *, max_retries: int) -> int | None:
    """Enqueue a WAITING copy of a failed trial (same parameters). None when retries are used up."""
    import optuna

    history = list(trial.system_attrs.get("retry_history", [])) + [trial.number]
    if len(history) > max_retries:
        return None
    system_attrs = {"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history}
    user_attrs = {k: v for k, v in trial.user_attrs.items()
                  if k not in (WORKER_ATTR, HEARTBEAT_ATTR, SWEEP_ATTR, RUNS_ATTR, ERROR_ATTR)}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, user_attrs=user_attrs,
                                              system_attrs=system_attrs))
    return len(history)


def fail_trial(study: Any, trial_id: int, reason: str) -> bool:
    """Mark a RUNNING trial FAIL with ``reason``. False when another worker finished it first."""
    import optuna

    storage = study._storage
    try:
        storage.set_trial_user_attr(trial_id, ERROR_ATTR, reason[:2000])
        return bool(storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def recover_stale_trials(study: Any, *, max_retries: int, grace_period: float,
                         echo: Callable[[str], None] = lambda s: None) -> list[int]:
    """FAIL every RUNNING trial whose worker is gone and enqueue its retry. Returns their numbers."""
    import optuna

    host = socket.gethostname()
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        reason = stale_reason(t, host=host, grace_period=grace_period)
        if reason is None:
            continue
        if not fail_trial(study, t._trial_id, f"killed: {reason}"):
            continue
        t = study._storage.get_trial(t._trial_id)
        attempt = enqueue_retry(study, t, max_retries=max_retries)
        echo(f"trial {t.number}: its worker died ({reason}); marked FAIL, "
             + (f"retry {attempt}/{max_retries} enqueued" if attempt else "no retries left"))
        out.append(t.number)
    return out


# ---------------------------------------------------------------------------------------------------
# reading metrics
def reduce_metric(values: list[float], how: str) -> float:
    if how == "last":
        return values[-1]
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) / len(values)


def read_metric(ledger: Any, key: str, label: str, spec: ObjectiveSpec | ReportSpec) -> float:
    series = [(step, value) for step, name, value in ledger.metrics(key) if name == spec.metric and value is not None]
    values = [v for _, v in series if math.isfinite(v)]
    if not values:
        logged = sorted({name for _, name, _ in ledger.metrics(key)})
        if series:
            raise TrialFailed(f"metric {spec.metric!r} of {label} ({key[:12]}) is not finite: {series[-1][1]}")
        raise TrialFailed(f"run {label} ({key[:12]}, role {spec.role}) logged no metric {spec.metric!r}; "
                          f"it logged: {', '.join(logged) or 'nothing'}")
    return reduce_metric(values, spec.reduce)


# ---------------------------------------------------------------------------------------------------
@dataclass
class TuneOptions:
    root: Path
    trials: int
    workers: int = 1
    storage: str | None = None
    study_name: str | None = None
    out_dir: Path | None = None
    enqueue_defaults: bool | None = None  # None: the search space's setting
    max_retries: int = 2
    heartbeat_interval: float = 30.0
    grace_period: float = 600.0
    stage_workers: int = 1
    max_consecutive_failures: int = 5
    poll_seconds: float = 1.0
    write_outputs: bool = True


@dataclass
class TuneResult:
    study_name: str
    storage: StorageRef
    counts: dict[str, int]
    ran: list[int] = field(default_factory=list)  # trial numbers this process ran
    outputs: dict[str, Path] = field(default_factory=dict)


class Tuner:
    """Runs a study of ``space`` until it has ``options.trials`` finished trials."""

    def __init__(self, space: SearchSpace, options: TuneOptions, *, echo: Callable[[str], None] | None = None) -> None:
        self.space = space
        self.opt = options
        self.root = Path(options.root).resolve()
        self.study_name = options.study_name or space.name
        self.ref = resolve_storage(options.storage, root=self.root, study=self.study_name, workers=options.workers)
        self.out_dir = Path(options.out_dir) if options.out_dir else self.root / "tune" / self.study_name
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self.lock = StudyLock(self.ref)
        self.host = socket.gethostname()
        self.study: Any = None
        self._stop = threading.Event()
        self._fatal: list[BaseException] = []
        self._ran: list[int] = []
        self._ran_lock = threading.Lock()
        self._seed_salt = 0 if self.ref.kind != "rdb" else int(
            hashlib.sha256(f"{self.host}:{os.getpid()}".encode()).hexdigest()[:6], 16)

    # ---- setup --------------------------------------------------------------------------------------
    def open(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with self.lock.hold():
            self.study = open_study(self.space, self.ref, self.study_name)
            enqueue = self.space.spec.enqueue_defaults if self.opt.enqueue_defaults is None else self.opt.enqueue_defaults
            if enqueue and not self.study.get_trials(deepcopy=False):
                params, skipped = self.space.default_params()
                if params:
                    self.study.enqueue_trial(params, user_attrs={"prism_lab:defaults": True}, skip_if_exists=True)
                    self.echo("enqueued the base grid's values (paper defaults) as trial 0"
                              + (f"; sampled instead (outside the range): {', '.join(skipped)}" if skipped else ""))
            recover_stale_trials(self.study, max_retries=self.opt.max_retries, grace_period=self.opt.grace_period,
                                 echo=self.echo)
        return self.study

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    # ---- main ---------------------------------------------------------------------------------------
    def run(self) -> TuneResult:
        if self.study is None:
            self.open()
        self.echo(f"study {self.study_name}: storage {self.ref.url}; target {self.opt.trials} finished trial(s); "
                  f"dashboard: {self.ref.dashboard}")
        if self.opt.workers <= 1:
            self._worker_loop(0)
        else:
            threads = [threading.Thread(target=self._worker_guard, args=(i,), name=f"tune-worker-{i}", daemon=True)
                       for i in range(self.opt.workers)]
            for t in threads:
                t.start()
            try:
                while any(t.is_alive() for t in threads):
                    for t in threads:
                        t.join(timeout=0.5)
            except KeyboardInterrupt:
                self._stop.set()
                raise
        if self._fatal:
            raise self._fatal[0]
        result = TuneResult(self.study_name, self.ref, self.counts(), ran=sorted(self._ran))
        if self.opt.write_outputs:
            from prism_lab.tune.output import write_outputs

            result.outputs = write_outputs(self.study, self.space, self.out_dir, storage=self.ref)
        return result

    def _worker_guard(self, index: int) -> None:
        try:
            self._worker_loop(index)
        except BaseException as exc:  # noqa: BLE001 - re-raised by run()
            self._fatal.append(exc)
            self._stop.set()

    def _worker_loop(self, index: int) -> None:
        import optuna

        failures = 0
        waited_since: float | None = None
        while not self._stop.is_set():
            with self.lock.hold():
                recover_stale_trials(self.study, max_retries=self.opt.max_retries,
                                     grace_period=self.opt.grace_period, echo=self.echo)
                trials = self.study.get_trials(deepcopy=False)
                finished = sum(1 for t in trials if t.state.name in FINISHED_OK)
                running = sum(1 for t in trials if t.state == optuna.trial.TrialState.RUNNING)
                if finished >= self.opt.trials:
                    return
                if finished + running >= self.opt.trials:
                    trial = None
                else:
                    trial, params = self._ask(len(trials), index)
            if trial is None:  # the remaining trials run elsewhere: wait, they may still fail
                if waited_since is None:
                    waited_since = time.time()
                    self.echo(f"worker {index}: {running} trial(s) running elsewhere; waiting for them to finish")
                time.sleep(self.opt.poll_seconds)
                continue
            waited_since = None
            ok = self._run_trial(trial, params)
            failures = 0 if ok else failures + 1
            if failures >= self.opt.max_consecutive_failures:
                raise StudyAborted(f"study {self.study_name}: {failures} trials failed in a row; see the errors above "
                                   f"and the trials' `{ERROR_ATTR}` user attr (optuna-dashboard)")

    def _ask(self, n_trials: int, index: int) -> tuple[Any, dict[str, Any]]:
        seed = self.space.spec.seed
        if seed is not None:  # trial n samples with seed + n: reproducible, and distinct across processes
            self.study.sampler = make_sampler(self.space, seed + n_trials + self._seed_salt)
        trial = self.study.ask()
        trial.set_user_attr(WORKER_ATTR, {"host": self.host, "pid": os.getpid(), "thread": index})
        trial.set_user_attr(HEARTBEAT_ATTR, time.time())
        params = self.space.suggest(trial)
        return trial, params

    # ---- one trial ----------------------------------------------------------------------------------
    def _run_trial(self, trial: Any, params: dict[str, Any]) -> bool:
        """Run one trial to its end; True when it completed or was pruned."""
        import optuna

        n = trial.number
        with self._ran_lock:
            self._ran.append(n)
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        retry = self.study._storage.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        self.echo(f"trial {n}: start" + (f" (retry of trial {retry})" if retry is not None else "") + f": {shown}")
        t0 = time.time()
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(trial._trial_id, stop_beat), daemon=True)
        beat.start()
        try:
            outcome = self._execute_trial(trial, params)
        except TrialInvalid as exc:
            self._tell_fail(trial, f"invalid configuration: {exc}", retry=False)
            return False
        except TrialFailed as exc:
            self._tell_fail(trial, str(exc), retry=True)
            return False
        except BaseException as exc:
            self._tell_fail(trial, f"interrupted: {type(exc).__name__}: {exc}", retry=True, quiet=True)
            raise
        finally:
            stop_beat.set()
            beat.join()
        state, values = outcome
        try:
            if state == "pruned":
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                self.echo(f"trial {n}: pruned at step {values} ({time.time() - t0:.0f}s)")
            else:
                self.study.tell(trial, values if self.space.multi_objective else values[0])
                shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(self.space.objectives, values))
                self.echo(f"trial {n}: {shown} ({time.time() - t0:.0f}s)")
        except optuna.exceptions.UpdateFinishedTrialError:
            self.echo(f"trial {n}: finished, but another worker had already marked it failed (judged stale); "
                      "its retry reuses the finished stage runs")
        return True

    def _heartbeat(self, trial_id: int, stop: threading.Event) -> None:
        import optuna

        while not stop.wait(self.opt.heartbeat_interval):
            try:
                self.study._storage.set_trial_user_attr(trial_id, HEARTBEAT_ATTR, time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return
            except Exception:  # noqa: BLE001 - a missed heartbeat is not fatal
                continue

    def _tell_fail(self, trial: Any, reason: str, *, retry: bool, quiet: bool = False) -> None:
        if not fail_trial(self.study, trial._trial_id, reason):
            return
        attempt = None
        if retry:
            frozen = self.study._storage.get_trial(trial._trial_id)
            attempt = enqueue_retry(self.study, frozen, max_retries=self.opt.max_retries)
        if not quiet:
            self.echo(f"trial {trial.number}: FAIL: {reason}"
                      + (f" (retry {attempt}/{self.opt.max_retries} enqueued)" if attempt else
                         " (not retried)" if retry else ""))

    def _execute_trial(self, trial: Any, params: dict[str, Any]) -> tuple[str, Any]:
        from prism_lab.harness.executors.local import LocalExecutor
        from prism_lab.harness.ledger import Ledger
        from prism_lab.harness.plan import Plan
        from prism_lab.harness.planning import build_plan

        sweep = f"{self.study_name}-trial-{trial.number}"
        try:
            grid = self.space.trial_grid(params, sweep)
            plan = build_plan(grid)
        except ConfigError as exc:
            raise TrialInvalid(str(exc).split(": ", 2)[-1]) from None
        cell = plan.cells[0]
        trial.set_user_attr(SWEEP_ATTR, sweep)
        trial.set_user_attr(RUNS_ATTR, dict(cell.runs))
        ledger = Ledger(self.root)
        try:
            ledger.record_plan(plan)
            executor = LocalExecutor(self.root, workers=self.opt.stage_workers, show_progress=False)

            def execute(roles: list[str]) -> None:
                needed: set[str] = set()
                stack = [cell.runs[r] for r in roles]
                while stack:
                    key = stack.pop()
                    if key not in needed:
                        needed.add(key)
                        stack.extend(plan.runs[key].inputs.values())
                sub = Plan(grid=plan.grid, cells=plan.cells, runs={k: r for k, r in plan.runs.items() if k in needed})
                summary = executor.run(sub)
                if summary.unavailable:
                    kinds = sorted({plan.runs[k].kind for k in summary.unavailable})
                    raise StudyAborted(f"stage kind(s) {', '.join(kinds)} are not available in this build; "
                                       "a trial cannot run them")
                if not summary.ok:
                    bad = (summary.failed or summary.blocked)[0]
                    row = ledger.get_run(bad)
                    detail = (row.error if row else None) or "failed"
                    raise TrialFailed(f"{plan.runs[bad].label} ({bad[:12]}): {detail}"
                                      + (f"; log: {row.log_path}" if row and row.log_path else ""))

            for step, rep in enumerate(self.space.reports):
                execute([rep.role])
                key = cell.runs[rep.role]
                value = read_metric(ledger, key, plan.runs[key].label, rep)
                if (rep.direction or self.space.spec.objective.direction) != self.space.spec.objective.direction:
                    value = -value
                trial.report(value, step)
                if trial.should_prune():
                    return "pruned", step
            execute([o.role for o in self.space.objectives])
            values = []
            for obj in self.space.objectives:
                key = cell.runs[obj.role]
                values.append(read_metric(ledger, key, plan.runs[key].label, obj))
            return "complete", values
        finally:
            ledger.close()


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def tune(space: SearchSpace, options: TuneOptions, *, echo: Callable[[str], None] | None = None) -> TuneResult:
    """Run (or resume, or join) the study of ``space`` until it has ``options.trials`` finished trials,
    then write the best-params grid, the summary and the plot."""
    tuner = Tuner(space, options, echo=echo)
    tuner.open()
    return tuner.run()
