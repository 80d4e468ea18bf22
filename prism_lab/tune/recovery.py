"""Trials whose worker died: how a tuner tells (the pid is gone on this host, no heartbeat from another),
marks them FAIL and enqueues a retry with the same parameters (system attrs ``failed_trial`` /
``retry_history``, as Optuna's RetryHeartbeatStaleTrialCallback does), for every storage."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

WORKER_ATTR = "prism_lab:worker"  # {"host", "pid", "thread"}
HEARTBEAT_ATTR = "prism_lab:heartbeat"  # unix time, refreshed while the trial runs
SWEEP_ATTR = "prism_lab:sweep"
RUNS_ATTR = "prism_lab:runs"  # role -> run key
ERROR_ATTR = "prism_lab:error"


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
