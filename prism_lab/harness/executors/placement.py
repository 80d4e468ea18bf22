"""Where a stage run goes on this machine: how it is launched, which GPUs it gets, its environment.

A run whose config has ``resources.processes > 1`` starts under torchrun (``python -m
torch.distributed.run --standalone``: one rendezvous on a free local port per run, so several can
run at once); each rank runs ``prism_lab.harness.run_stage``. A run with ``resources.gpus = g`` gets
``g`` GPU ids of its own from the pool (``CUDA_VISIBLE_DEVICES``); runs wait in the queue until
enough GPUs are free, and never share one unless the executor was told to (``share_gpus``). When a
pool is in use (named, or found by nvidia-smi because some run asks for GPUs), runs that declare no GPUs
see none, so they cannot land on a GPU another run holds.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prism_lab.config.resources import ResourcesConfig
from prism_lab.errors import ConfigError


def run_resources(config: Mapping[str, Any]) -> ResourcesConfig | None:
    """The ``resources`` of a stage run's resolved config (None for kinds without the field)."""
    res = config.get("resources")
    return ResourcesConfig.model_validate(res) if res is not None else None


def launch_command(root: Path, key: str, processes: int, *, grid: Path | None = None) -> list[str]:
    """The command line of one stage run: the run_stage module, under torchrun when ``processes > 1``
    (with ``grid``, the stage process plans that grid first if the run is not in the ledger)."""
    stage = ["-m", "prism_lab.harness.run_stage", "--root", str(root), *(["--grid", str(grid)] if grid else []), key]
    if processes <= 1:
        return [sys.executable, *stage]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *stage]


def die_with_parent() -> None:
    """``preexec_fn`` of a launched run: SIGKILL it when the executor dies (Linux), so a torchrun agent
    (which the ranks' own death signal points at) never outlives the executor."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class GpuAllocator:
    """Hands out GPU ids from ``pool``: exclusively (a run waits until enough are free), or round
    robin when ``share`` is set."""

    def __init__(self, pool: list[str], share: bool = False) -> None:
        self.pool = list(pool)
        self.share = share
        self.free = list(pool)
        self._next = 0

    def check(self, label: str, need: int) -> None:
        if need > len(self.pool):
            where = f"GPUs {','.join(self.pool)}" if self.pool else "no GPUs (none given with --gpus or CUDA_VISIBLE_DEVICES, none found by nvidia-smi)"
            raise ConfigError(f"stage run {label} needs {need} GPUs (resources.gpus) but this executor has {where}")

    def take(self, need: int) -> list[str] | None:
        """``need`` ids, or None when they are not free now."""
        if need == 0:
            return []
        if self.share:
            ids = [self.pool[(self._next + i) % len(self.pool)] for i in range(need)]
            self._next = (self._next + need) % len(self.pool)
            return ids
        if need > len(self.free):
            return None
        ids, self.free = self.free[:need], self.free[need:]
        return ids

    def release(self, ids: list[str]) -> None:
        if not self.share:
            self.free += [i for i in ids if i not in self.free]
            self.free.sort(key=self.pool.index)


def placement_env(env: Mapping[str, str], resources: ResourcesConfig | None, gpu_ids: list[str],
                  pool_in_use: bool) -> dict[str, str]:
    """``env`` with ``CUDA_VISIBLE_DEVICES`` set for this run: its own GPUs; none when it asked for
    none and a pool is in use; unchanged for kinds without ``resources`` or without a pool."""
    out = dict(env)
    if resources is not None and (gpu_ids or pool_in_use):
        out["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    return out
