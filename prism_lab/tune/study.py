"""The ask-and-tell loop: every Optuna trial is one harness cell.

A trial's parameters are written into the base grid's stage configs; the resulting one-cell grid
(sweep ``<study>-trial-<n>``) is planned, recorded in the ledger and run by the executor (local, or Ray with `--executor ray`). Stage
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

import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prism_lab.harness.executors import ExecutorOptions
from prism_lab.tune.base_identity import check_base_grid
from prism_lab.tune.optuna_study import make_sampler, open_study
from prism_lab.tune.recovery import (
    ERROR_ATTR,
    HEARTBEAT_ATTR,
    WORKER_ATTR,
    enqueue_retry,
    fail_trial,
    recover_stale_trials,
)
from prism_lab.tune.space import SearchSpace
from prism_lab.tune.storage import StorageRef, StudyLock, resolve_storage
from prism_lab.tune.trial_cell import (
    StudyAborted,
    TrialFailed,
    TrialInvalid,
    execute_trial,
)

FINISHED_OK = ("COMPLETE", "PRUNED")


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
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)  # which executor runs a trial's stages
    max_consecutive_failures: int = 5
    poll_seconds: float = 1.0
    write_outputs: bool = True
    rerun_stale: bool = False  # run again the done runs other code made (else they are reused with a warning)


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
        self._warned_stale: set[str] = set()  # stale run keys already named in a warning
        self._seed_salt = 0 if self.ref.kind != "rdb" else int(
            hashlib.sha256(f"{self.host}:{os.getpid()}".encode()).hexdigest()[:6], 16)

    # ---- setup --------------------------------------------------------------------------------------
    def open(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with self.lock.hold():
            self.study = open_study(self.space, self.ref, self.study_name)
            check_base_grid(self.study, self.space, self.study_name, self.ref.url)
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
        return execute_trial(trial, params, space=self.space, root=self.root,
                             sweep=f"{self.study_name}-trial-{trial.number}",
                             executor=replace(self.opt.executor, workers=self.opt.stage_workers),
                             rerun_stale=self.opt.rerun_stale,
                             warn=lambda stale, plan: self._warn_stale(trial.number, stale, plan))

    def settle_stale(self, cleared: Any) -> None:
        """The pre-flight's side effect, once every check passed: with ``rerun_stale`` make the base cell's
        stale runs pending again, else name them once (trials then warn only about other ones)."""
        from prism_lab.harness import preflight

        if not cleared.stale:
            return
        if self.opt.rerun_stale:
            reset = preflight.commit(cleared, rerun_stale=True)
            self.echo(f"--rerun-stale: {len(cleared.stale)} stale run(s); {len(reset)} run(s) made pending again")
            return
        self._warned_stale.update(cleared.stale)
        self.echo(preflight.stale_warning(cleared, "`tune --rerun-stale`"))

    def _warn_stale(self, number: int, stale: dict[str, list[str]], plan: Any) -> None:
        """One line per trial that reuses done runs made by other code not named before."""
        with self._ran_lock:
            new = {k: v for k, v in stale.items() if k not in self._warned_stale}
            self._warned_stale.update(new)
        if new:
            first = next(iter(new))
            self.echo(f"trial {number}: reuses {len(new)} done run(s) made by other code than the code installed now "
                      f"(e.g. {plan.runs[first].label}: {new[first][0]}); `tune --rerun-stale` runs them again")

def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def tune(space: SearchSpace, options: TuneOptions, *, echo: Callable[[str], None] | None = None,
         cleared: Any = None) -> TuneResult:
    """Run (or resume, or join) the study of ``space`` until it has ``options.trials`` finished trials,
    then write the best-params grid, the summary and the plot. ``cleared``: what the pre-flight found
    for the base cell (harness/preflight.py); its stale runs are run again or named once, after the
    study's own checks passed."""
    tuner = Tuner(space, options, echo=echo)
    tuner.open()
    if cleared is not None:
        tuner.settle_stale(cleared)
    return tuner.run()
