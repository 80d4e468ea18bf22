"""The kind of machine a run's numbers came from.

The math libraries pick their kernels by processor: torch dispatches to the widest SIMD level the CPU has,
and MKL chooses its code branch and blocking by CPU model. Summation orders differ with them, so the same
code, settings and seed give bitwise-equal results on one kind of machine (under any load), but can differ
in the last bits on another; a training run of thousands of steps turns those bits into different
checkpoints (docs/cpu_notes.md §15). Each finished run records the kind of machine it ran on, and
``sweep status`` and ``report`` say when a sweep's runs come from more than one.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["conflicting_machines", "cpu_model", "group_machines", "machine_label", "numeric_machine", "simd_level"]

_CPUINFO = Path("/proc/cpuinfo")

#: Environment variables that change which kernels run on the same CPU (so they are part of its kind).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")

#: /proc/cpuinfo flag -> SIMD level, widest first.
_SIMD = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"), ("asimd", "NEON"))


def _first_processor(cpuinfo: str | None) -> dict[str, str]:
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough
            continue
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: str | None = None) -> str:
    """``"<model name> (family F, model M)"`` from /proc/cpuinfo's first processor, else the platform's name."""
    fields = _first_processor(cpuinfo)
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def simd_level(cpuinfo: str | None = None) -> str:
    """The widest SIMD level the first processor lists (``AVX-512``, ``AVX2``, ...; ``unknown`` without
    /proc/cpuinfo)."""
    fields = _first_processor(cpuinfo)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return next((level for flag, level in _SIMD if flag in flags), "unknown")


@cache
def _cpu() -> tuple[str, str]:
    return cpu_model(), simd_level()


def numeric_machine() -> dict[str, str]:
    """The kind of machine this process computes on: architecture, CPU model and SIMD level, any environment
    variable that changes the kernels, and the GPUs when CUDA was used. When the process has loaded torch
    (every stage that computes has), torch's own dispatch level too; the harness never imports torch."""
    cpu, simd = _cpu()
    out = {"arch": platform.machine() or "unknown", "cpu": cpu, "simd": simd}
    pinned = [f"{k}={os.environ[k]}" for k in KERNEL_ENV if os.environ.get(k)]
    if pinned:
        out["kernel_env"] = " ".join(pinned)
    torch = sys.modules.get("torch")
    if torch is None:
        return out
    try:
        out["torch_cpu_kernels"] = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch < 2.1
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu"] = ", ".join(sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}))
    return out


def machine_label(machine: dict[str, Any] | None) -> str:
    """One line naming a recorded machine kind (``"not recorded ..."`` for runs made before prism-lab recorded
    it)."""
    if not machine:
        return "not recorded (made by an older prism-lab)"
    label = f"{machine.get('cpu', 'unknown CPU')}, {machine.get('arch', '?')} {machine.get('simd', '?')}"
    if machine.get("kernel_env"):
        label += f", {machine['kernel_env']}"
    if machine.get("gpu"):
        label += f", GPU {machine['gpu']}"
    return label


def conflicting_machines(machines: Iterable[dict[str, Any] | None]) -> bool:
    """Whether recorded machines differ in a way that changes kernels: CPU, SIMD level or kernel environment, or
    two different GPU sets (a run that used no GPU, e.g. the data stage, does not conflict with one that did;
    runs without a record are left out)."""
    recorded = [m for m in machines if m]
    cpus = {(m.get("arch"), m.get("cpu"), m.get("simd"), m.get("kernel_env")) for m in recorded}
    gpus = {m["gpu"] for m in recorded if m.get("gpu")}
    return len(cpus) > 1 or len(gpus) > 1


def group_machines(machines: Iterable[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """One ``{"label", "runs", "machine"}`` per kind of machine among the recorded ``machines`` (one per run),
    most runs first."""
    kinds: dict[str, dict[str, Any]] = {}
    for machine in machines:
        label = machine_label(machine)
        kinds.setdefault(label, {"label": label, "runs": 0, "machine": machine})["runs"] += 1
    return sorted(kinds.values(), key=lambda e: (-e["runs"], e["label"]))
