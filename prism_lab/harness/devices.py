"""What this machine offers a stage run: its GPUs (index and memory) and its host memory. No torch.

GPUs are listed by ``nvidia-smi`` (the NVIDIA driver's tool), so the executor and the memory planner
can see them without importing torch or touching CUDA. ``gpu_pool`` is which of them the executor may
hand out: ``--gpus 0,1,...``, else ``CUDA_VISIBLE_DEVICES``, else every GPU nvidia-smi lists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from prism_lab.errors import ConfigError


@dataclass(frozen=True)
class Gpu:
    id: str  # what CUDA_VISIBLE_DEVICES names it by
    memory_bytes: float | None = None


def detect_gpus(timeout: float = 10.0) -> list[Gpu]:
    """The GPUs nvidia-smi lists (index and total memory); [] without nvidia-smi or a driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit():
            try:
                gpus.append(Gpu(parts[0], float(parts[1]) * 2**20))  # MiB
            except ValueError:
                gpus.append(Gpu(parts[0]))
    return gpus


def parse_gpu_list(spec: str, where: str = "--gpus") -> list[str]:
    """``"0,1,3"`` -> ``["0", "1", "3"]``; ConfigError on empty or repeated entries."""
    ids = [p.strip() for p in spec.split(",")]
    if not spec.strip() or any(not p for p in ids):
        raise ConfigError(f"{where}: expected a comma-separated list of GPU ids such as 0,1,2,3, got {spec!r}")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}: GPU ids repeat in {spec!r}")
    return ids


def gpu_pool(spec: str | None, environ: Mapping[str, str] | None = None) -> list[str] | None:
    """GPU ids the executor may give out, or None when no pool was named (``--gpus`` or
    ``CUDA_VISIBLE_DEVICES``); then runs that ask for GPUs get the ones nvidia-smi lists."""
    env = os.environ if environ is None else environ
    if spec is not None:
        return parse_gpu_list(spec)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip():
        return parse_gpu_list(visible, "CUDA_VISIBLE_DEVICES")
    return None


def check_gpu_ids(ids: list[str], found: list[Gpu], where: str = "--gpus") -> None:
    """ConfigError (one line) when ``ids`` names GPUs that nvidia-smi does not list on this machine
    (``found``): runs would otherwise start on devices that are not there."""
    known = {g.id for g in found}
    missing = [i for i in ids if i not in known]
    if not missing:
        return
    have = f"GPU ids {','.join(g.id for g in found)}" if found else "no GPU (nvidia-smi lists none)"
    raise ConfigError(f"{where}: GPU id(s) {','.join(missing)} do not exist on this machine, which has {have}; "
                      "name GPUs nvidia-smi lists")


def host_memory_bytes() -> float | None:
    """Total host memory (``MemTotal`` of /proc/meminfo), or None where there is no /proc."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None
