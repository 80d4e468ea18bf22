"""Executors run a plan's pending stage runs in dependency order, with one scheduling loop
(scheduler.py) and a launcher that places and starts each run: ``local`` (subprocesses on this machine,
see local.py) or ``ray`` (named Ray actors on a cluster, see ray.py; needs the `ray` extra)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import PrismError

EXECUTOR_NAMES = ("local", "ray")


@dataclass(frozen=True)
class ExecutorOptions:
    name: str = "local"
    workers: int = 1  # local: stage runs at once (on Ray the cluster's resources bound it)
    gpus: list[str] | None = None  # local: GPU ids runs may be given (None: found when a run asks for GPUs)
    share_gpus: bool = False  # local: runs may share GPUs
    address: str | None = None  # ray: HOST:PORT of the head node, "auto", or None (RAY_ADDRESS, else a local cluster)
    shared_root: Path | None = None  # ray: storage for runs/ mounted on every node (default: the ledger root)
    worker_retries: int = 2  # ray: restarts of a run whose Ray worker or node died


def make_executor(root: Path, options: ExecutorOptions, *, retry_failed: bool = True, show_progress: bool = True) -> Any:
    """The scheduling loop (scheduler.py) with the launcher ``options.name`` names."""
    from prism_lab.harness.executors.scheduler import Executor

    if options.name == "ray":
        from prism_lab.harness.executors.ray import RayLauncher

        launcher: Any = RayLauncher(root, address=options.address, storage=options.shared_root,
                                    max_retries=options.worker_retries)
    elif options.name != "local":
        raise PrismError(f"--executor: unknown executor {options.name!r}; known: {', '.join(EXECUTOR_NAMES)}")
    elif options.address or options.shared_root:
        raise PrismError("--address and --shared-root only apply to --executor ray")
    else:
        from prism_lab.harness.executors.local import LocalLauncher

        launcher = LocalLauncher(root, workers=options.workers, gpus=options.gpus, share_gpus=options.share_gpus)
    return Executor(root, launcher, retry_failed=retry_failed, show_progress=show_progress)
