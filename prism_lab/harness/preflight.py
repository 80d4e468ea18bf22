"""The pre-flight that `sweep run` and `tune` share: every check before any side effect.

The order is the rule (issue 29): (a) usage checks of the command line (``check_usage``), (b) the
grid's inputs (the caller loads and checks its grid between the two calls, see ``planning``), (c) the
memory fit of the runs to execute and (d) the done runs made by other code (``check_plan``); only
when all of them passed does ``commit`` make side effects (stale runs made pending again for
``--rerun-stale``). The executors create the ledger afterwards. A failed check is a one-line
PrismError; nothing is written before it. No torch here: the memory estimate imports it lazily, and
only for runs that need sizing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError, PrismError

__all__ = ["Cleared", "RunRequest", "check_address", "check_plan", "check_usage", "commit"]


@dataclass(frozen=True)
class RunRequest:
    """How the user asked to run: the options `sweep run` and `tune` share."""

    executor: str = "local"
    gpus: str | None = None  # --gpus as typed
    share_gpus: bool = False
    address: str | None = None  # --address (ray)
    shared_root: Path | None = None  # --shared-root (ray)
    stages: set[str] | None = None  # --stages (sweep run)


@dataclass
class Cleared:
    """What the checks found; ``commit`` acts on it."""

    plan: Any
    root: Path
    targets: list[str]
    stale: dict[str, list[str]] = field(default_factory=dict)  # done run key -> why other code made it


# ---- (a) usage ----------------------------------------------------------------------------------------
def check_address(address: str | None, environ: Mapping[str, str] | None = None) -> None:
    """The Ray address (``--address``, else ``RAY_ADDRESS``) answers, checked before anything is written.
    The check itself is harness/executors/ray_address.py's (one gRPC call to the head; no Ray import)."""
    if importlib.util.find_spec("ray") is None:
        raise PrismError("--executor ray needs the `ray` extra: pip install -e \".[ray]\"")
    from prism_lab.harness.executors.ray_address import address_from, check_address as ray_check_address

    address, option = address_from(address, environ)
    if address:
        ray_check_address(address, option=option)


def check_usage(request: RunRequest, environ: Mapping[str, str] | None = None) -> list[str] | None:
    """Every check of the command line and of the environment the stages read; returns the GPU pool
    (``devices.gpu_pool``)."""
    from prism_lab.config.collective_timeout import collective_timeout_s
    from prism_lab.harness.devices import check_gpu_ids, detect_gpus, gpu_pool

    collective_timeout_s(environ)  # a sharded stage reads it when it starts: refuse a bad value before any does
    from prism_lab.harness.executors import EXECUTOR_NAMES
    from prism_lab.harness.stage_kinds import STAGE_KINDS

    for kind in sorted(request.stages or ()):
        if kind not in STAGE_KINDS:
            raise ConfigError(f"--stages: unknown stage kind {kind!r}; known: {', '.join(STAGE_KINDS.names())}")
    if request.executor not in EXECUTOR_NAMES:
        raise ConfigError(f"--executor: unknown executor {request.executor!r}; known: {', '.join(EXECUTOR_NAMES)}")
    if request.executor == "ray":
        if request.gpus is not None or request.share_gpus:
            raise ConfigError("--gpus and --share-gpus apply to --executor local; on Ray, Ray places each run's "
                              "resources.gpus")
        check_address(request.address, environ)
        return None
    if request.address or request.shared_root:
        raise ConfigError("--address and --shared-root only apply to --executor ray")
    pool = gpu_pool(request.gpus, environ)
    if request.gpus is not None:
        check_gpu_ids(pool or [], detect_gpus())
    return pool


# ---- (c) memory fit and (d) stale runs -------------------------------------------------------------------
def _not_done(ledger: Any, keys: list[str]) -> list[str]:
    if ledger is None:
        return list(keys)
    rows = ledger.get_runs(keys)
    return [k for k in keys if k not in rows or rows[k].status != "done"]


def _check_fit(plan: Any, keys: list[str], pool: list[str] | None) -> None:
    """The local executor's runs must fit the devices they will get (on Ray the cluster's are unknown here)."""
    if not any(plan.runs[k].config.get("resources") is not None for k in keys):
        return
    from prism_lab.harness.devices import Gpu, detect_gpus
    from prism_lab.harness.memory_fit import check_fit

    found = detect_gpus()
    visible = [g for g in found if pool is None or g.id in pool] or [Gpu(i) for i in (pool or [])]
    check_fit(plan, keys, visible)


def _downstream(plan: Any, keys: list[str]) -> set[str]:
    deps = plan.dependents()
    todo, seen = list(keys), set()
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo.extend(deps.get(key, []))
    return seen


def check_plan(plan: Any, root: Path, request: RunRequest, pool: list[str] | None, targets: list[str], *,
               rerun_stale: bool = False) -> Cleared:
    """(c) the runs of ``targets`` still to execute (with ``rerun_stale``, the stale ones and their
    dependents too) fit their devices; (d) which done ones other code made. Reads the ledger under
    ``root`` if there is one; writes nothing."""
    from prism_lab.harness.freshness import stale_runs
    from prism_lab.harness.ledger import Ledger

    ledger = Ledger.open_existing(root)
    try:
        stale = stale_runs(ledger, ledger.get_runs(targets)) if ledger is not None else {}
        todo = set(_not_done(ledger, targets)) | (_downstream(plan, list(stale)) if rerun_stale else set())
        if request.executor == "local":
            _check_fit(plan, [k for k in plan.runs if k in todo], pool)
    finally:
        if ledger is not None:
            ledger.close()
    return Cleared(plan=plan, root=root, targets=list(targets), stale=stale)


def stale_warning(cleared: Cleared, rerun_hint: str = "--rerun-stale") -> str | None:
    """The one line that says done runs were made by other code and are kept (None when there are none)."""
    if not cleared.stale:
        return None
    first = next(iter(cleared.stale))
    return (f"{len(cleared.stale)} done run(s) were made by other code than the code installed now "
            f"(e.g. {cleared.plan.runs[first].label}: {cleared.stale[first][0]}); they are kept and reused. "
            f"{rerun_hint} runs them and their dependents again")


# ---- (e) side effects ---------------------------------------------------------------------------------
def commit(cleared: Cleared, *, rerun_stale: bool) -> list[str]:
    """After every check passed: with ``rerun_stale``, make the stale runs and their dependents pending
    again (their artifacts are set aside as ``*.stale``). Returns the keys made pending."""
    if not (rerun_stale and cleared.stale):
        return []
    from prism_lab.harness.freshness import invalidate
    from prism_lab.harness.ledger import Ledger

    ledger = Ledger.open_existing(cleared.root)
    if ledger is None:
        return []
    try:
        return invalidate(ledger, cleared.root, cleared.plan, cleared.stale)
    finally:
        ledger.close()
