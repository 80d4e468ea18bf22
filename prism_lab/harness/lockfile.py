"""A constraints file (``constraints/core.txt``, the locked environment) against installed versions.

Pure functions: :func:`parse_lock` reads the text of a ``pip freeze``-style lock, :func:`lock_differences`
compares it with the versions a caller read from the environment (``harness/installed.py`` reads them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

#: Never in a lock: the README installs the CPU torch wheel first, and prism-lab is the project itself.
NOT_LOCKED = frozenset({"torch", "prism-lab"})

#: Installed but not locked is normally fine (a user's own tools); these are reported anyway. `kernels`
#: comes with transformers >= 5.25 and turns on hub kernels (a run-time download), see prism_lab/__init__.py.
REPORTED_WHEN_UNLOCKED = frozenset({"kernels"})

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(?:;.*)?$")


def canonical(name: str) -> str:
    """A distribution name as pip compares it (PEP 503): lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """``canonical name -> version`` of every ``name==version`` line; comments and blank lines are skipped.
    Any other line raises ValueError naming its line number (a lock pins exact versions, nothing else)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        if not match:
            raise ValueError(f"line {number}: expected 'name==version', got {line[:60]!r}")
        pins[canonical(match.group(1))] = match.group(2)
    return pins


def same_version(a: str, b: str) -> bool:
    try:
        return Version(a) == Version(b)
    except InvalidVersion:
        return a == b


@dataclass(frozen=True)
class Difference:
    """One package whose installed version is not the locked one (either side may be absent)."""

    name: str
    installed: str | None
    locked: str | None

    def line(self) -> str:
        installed = f"installed {self.installed}" if self.installed else "not installed"
        locked = f"locked {self.locked}" if self.locked else "not in the lock"
        return f"{self.name}: {installed}, {locked}"


def lock_differences(locked: dict[str, str], installed: dict[str, str], needed: set[str]) -> list[Difference]:
    """Where ``installed`` (canonical name -> version) differs from ``locked``, sorted by name.

    A locked package at another version is reported; a locked package that is not installed only when it is
    in ``needed`` (what prism-lab and its installed extras require: a lock covers extras a user may not
    have installed); an installed package absent from the lock only when it is in REPORTED_WHEN_UNLOCKED.
    """
    out: list[Difference] = []
    for name, version in locked.items():
        if name in NOT_LOCKED:
            continue
        have = installed.get(name)
        if have is None:
            if name in needed:
                out.append(Difference(name, None, version))
        elif not same_version(have, version):
            out.append(Difference(name, have, version))
    for name in REPORTED_WHEN_UNLOCKED:
        if name in installed and name not in locked:
            out.append(Difference(name, installed[name], None))
    return sorted(out, key=lambda d: d.name)


def all_differences(locked: dict[str, str], installed: dict[str, str]) -> list[Difference]:
    """Every difference, both ways (scripts/newest.sh: what a fresh resolution changed against the lock)."""
    names = (set(locked) | set(installed)) - NOT_LOCKED
    out = [Difference(n, installed.get(n), locked.get(n)) for n in names
           if n not in locked or n not in installed or not same_version(installed[n], locked[n])]
    return sorted(out, key=lambda d: d.name)
