"""What this environment has installed, for comparison with the lock (``harness/lockfile.py``).

Versions come from importlib.metadata; what prism-lab needs is the transitive closure of its requirements
with the extras that are installed (an extra is installed when all its direct requirements are).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from prism_lab.harness.lockfile import NOT_LOCKED, Difference, canonical, lock_differences, parse_lock

#: Overrides where `prism-lab doctor` reads the lock from.
LOCK_ENV = "PRISM_LAB_LOCK"

#: The repository root of this (editable) install: constraints/ sits next to prism_lab/.
SOURCE_ROOT = Path(__file__).resolve().parents[2]

#: The core environment's lock; the VLMEvalKit extra lives in its own virtualenv with its own lock.
CORE_LOCK = SOURCE_ROOT / "constraints" / "core.txt"
VLMEVAL_LOCK = SOURCE_ROOT / "constraints" / "vlmeval.txt"


def installed_versions() -> dict[str, str]:
    """canonical name -> version of every installed distribution."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonical(name), dist.version)
    return out


def _requirements(name: str, extras: frozenset[str]) -> list[Requirement]:
    """Direct requirements of distribution ``name`` that apply here with ``extras`` requested."""
    try:
        lines = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            out.append(req)
    return out


def extra_names(name: str = "prism-lab") -> list[str]:
    try:
        return list(importlib.metadata.metadata(name).get_all("Provides-Extra") or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def installed_extras(installed: dict[str, str], name: str = "prism-lab") -> list[str]:
    """Extras of ``name`` whose own direct requirements are all installed."""
    base = {canonical(r.name) for r in _requirements(name, frozenset())}
    out = []
    for extra in extra_names(name):
        own = {canonical(r.name) for r in _requirements(name, frozenset({extra}))} - base
        if own and all(n in installed for n in own):
            out.append(extra)
    return out


def required_closure(name: str, extras: list[str] | tuple[str, ...]) -> set[str]:
    """Canonical names of every distribution ``name[extras]`` requires, transitively (not walking into
    NOT_LOCKED: torch's own requirements are the CPU wheel's business)."""
    seen: set[str] = set()
    queue: deque[tuple[str, frozenset[str]]] = deque([(name, frozenset(extras))])
    visited: set[tuple[str, frozenset[str]]] = set()
    while queue:
        current, wanted = queue.popleft()
        if (canonical(current), wanted) in visited:
            continue
        visited.add((canonical(current), wanted))
        for req in _requirements(current, wanted):
            dep = canonical(req.name)
            seen.add(dep)
            if dep not in NOT_LOCKED:
                queue.append((dep, frozenset(req.extras)))
    return seen


def lock_path(installed: dict[str, str]) -> Path:
    """$PRISM_LAB_LOCK, else the lock of this kind of environment (VLMEvalKit's own, or the core one)."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    return VLMEVAL_LOCK if "ms-vlmeval" in installed else CORE_LOCK


@dataclass
class LockReport:
    """The installed environment against its lock: ``problem`` is one line when the lock cannot be read."""

    path: Path
    extras: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    problem: str | None = None


def compare_with_lock() -> LockReport:
    installed = installed_versions()
    path = lock_path(installed)
    extras = installed_extras(installed)
    try:
        locked = parse_lock(path.read_text())
    except FileNotFoundError:
        return LockReport(path, extras, problem=f"no lock file at {path} (not a source checkout?): nothing to compare")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return LockReport(path, extras, problem=f"cannot read the lock {path}: {exc}")
    needed = required_closure("prism-lab", extras)
    return LockReport(path, extras, lock_differences(locked, installed, needed))
