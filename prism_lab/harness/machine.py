"""The kind of machine a run's numbers came from.

The math libraries pick their kernels by processor: torch dispatches to the widest SIMD level the CPU has,
and MKL chooses its code branch and blocking by CPU model. Summation orders differ with them, so the same
code, settings and seed give bitwise-equal results on one kind of machine (under any load), but can differ
in the last bits on another; a training run of thousands of steps turns those bits into different
checkpoints (docs/cpu_notes.md §15). Each finished run records the kind of machine it ran on, and
``sweep status`` and ``report`` say when a sweep's runs come from more than one.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["machine_label", "numeric_machine"]

_CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: str | None = None) -> str:
    """``"<model name> (family F, model M)"`` from /proc/cpuinfo's first processor, else the platform's name."""
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
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


@cache
def _cpu() -> str:
    return cpu_model()


def numeric_machine() -> dict[str, str]:
    """What decides the kernels this process ran: architecture, CPU model, torch's CPU dispatch level, and the
    GPUs when CUDA was used."""
    out = {"arch": platform.machine() or "unknown", "cpu": _cpu(), "cpu_kernels": "unknown"}
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return out
    try:
        out["cpu_kernels"] = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - torch < 2.1
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        out["gpu"] = ", ".join(names)
    return out


def machine_label(machine: dict[str, Any] | None) -> str:
    """One line naming a recorded machine kind (``"not recorded"`` for runs made before prism-lab recorded it)."""
    if not machine:
        return "not recorded (made by an older prism-lab)"
    label = f"{machine.get('cpu', 'unknown CPU')}, {machine.get('arch', '?')}, torch CPU kernels " \
            f"{machine.get('cpu_kernels', '?')}"
    if machine.get("gpu"):
        label += f", GPU {machine['gpu']}"
    return label
