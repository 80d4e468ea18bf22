"""Classify a model reference without loading anything: preset name, local directory, or hub id."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class RefKind:
    kind: str  # "preset" | "local" | "hub" | "invalid"
    problem: str = ""


def classify_model_ref(ref: str, base: Path | None = None) -> RefKind:
    from prism_lab.models.presets import PRESETS

    if not isinstance(ref, str) or not ref:
        return RefKind("invalid", "expected a model preset name, a local checkpoint directory or a hub id")
    if ref in PRESETS:
        return RefKind("preset")
    p = Path(ref).expanduser()
    if not p.is_absolute() and base is not None and (base / p).exists():
        p = base / p
    if p.is_dir():
        if (p / "config.json").is_file():
            return RefKind("local")
        return RefKind("invalid", f"checkpoint directory {p} has no config.json")
    if ref.startswith((".", "/", "~")):
        return RefKind("invalid", f"checkpoint directory {ref} does not exist")
    if _HUB_ID.match(ref):
        return RefKind("hub")
    known = ", ".join(PRESETS.names())
    return RefKind("invalid", f"unknown model preset {ref!r}: expected one of {known}, a local checkpoint "
                              "directory, or a hub id like Qwen/Qwen3-VL-4B-Instruct")
