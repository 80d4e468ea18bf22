"""Which code made a run, and whether the code installed now would make the same.

A finished stage run records a *code fingerprint*: the sha256 of every prism_lab source file its process
imported (so a change to the RL trainer marks RL runs stale, not SFT runs) and the versions of the packages
that decide the numbers (torch, transformers, ...). It is stored in the run's ``run.json`` and as a
``code`` event in the ledger, so ``sweep status`` and ``report`` can flag runs made by other code from the
ledger alone, and ``sweep run --rerun-stale`` can run them again. A stage kind's ``version`` stays the
way to invalidate runs on purpose (it changes their content keys).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from prism_lab.harness.machine import group_machines, numeric_machine

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../prism_lab

#: Packages whose version changes numbers (kernels, model code, tokenizers, processors).
NUMERIC_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "accelerate", "numpy", "pillow")

CODE_EVENT = "code"

__all__ = ["CODE_EVENT", "code_fingerprint", "installed_code", "invalidate", "recorded_fingerprints",
           "run_machines", "stale_reasons", "stale_runs"]


def _file_hash(path: str) -> str | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _hash_of(path, st.st_mtime_ns, st.st_size)


@cache
def _hash_of(path: str, mtime_ns: int, size: int) -> str | None:  # cached per (path, mtime, size)
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def imported_sources(modules: Iterable[Any] | None = None) -> dict[str, str]:
    """``{path relative to the package: sha256[:16]}`` of every prism_lab module imported in this process."""
    out: dict[str, str] = {}
    for mod in list(modules if modules is not None else sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        p = Path(path).resolve()
        try:
            rel = p.relative_to(PACKAGE_DIR).as_posix()
        except ValueError:
            continue
        digest = _file_hash(str(p))
        if digest is not None:
            out[rel] = digest
    return dict(sorted(out.items()))


def code_fingerprint() -> dict[str, Any]:
    """The fingerprint of the code this process ran: its prism_lab sources and numeric packages, and the kind of
    machine it ran on (recorded, not compared: another machine is not other code; see ``run_machines``)."""
    return {"sources": imported_sources(), "packages": {n: _package_version(n) for n in NUMERIC_PACKAGES},
            "machine": numeric_machine()}


def stale_reasons(fingerprint: dict[str, Any] | None, *, package_dir: Path = PACKAGE_DIR,
                  versions: dict[str, str | None] | None = None) -> list[str]:
    """Why the code installed now differs from the code that made a run (empty = the same code).

    A run without a fingerprint (made before prism-lab recorded them) is stale: nothing says which code
    made it."""
    if not fingerprint:
        return ["no code fingerprint recorded (made by an older prism-lab)"]
    reasons = []
    for rel, digest in fingerprint.get("sources", {}).items():
        now = _file_hash(str(package_dir / rel))
        if now is None:
            reasons.append(f"{rel} no longer exists")
        elif now != digest:
            reasons.append(f"{rel} changed")
    for name, version in fingerprint.get("packages", {}).items():
        now_v = versions.get(name) if versions is not None else _package_version(name)
        if now_v != version:
            reasons.append(f"{name} {version} -> {now_v}")
    return reasons


def recorded_fingerprints(ledger: Any, keys: Iterable[str]) -> dict[str, dict[str, Any] | None]:
    """run key -> the code fingerprint its latest ``code`` event records (None when it has none)."""
    out: dict[str, dict[str, Any] | None] = {}
    for key, message in ledger.latest_events(CODE_EVENT, keys).items():
        try:
            out[key] = json.loads(message) if message is not None else None
        except ValueError:
            out[key] = None
    return out


def stale_runs(ledger: Any, runs: dict[str, Any]) -> dict[str, list[str]]:
    """Done runs (``runs``: key -> RunRow) made by other code than the code installed now: key -> reasons."""
    done = [k for k, r in runs.items() if r is not None and r.status == "done"]
    prints = recorded_fingerprints(ledger, done)
    out = {}
    for key in done:
        reasons = stale_reasons(prints[key])
        if reasons:
            out[key] = reasons
    return out


def run_machines(ledger: Any, runs: dict[str, Any]) -> list[dict[str, Any]]:
    """Kinds of machine the done runs (``runs``: key -> RunRow) were made on, most runs first: one
    ``{"label", "runs", "machine"}`` per label. Results reproduce bitwise on one kind of machine, not across
    kinds (``harness.machine``)."""
    done = [k for k, r in runs.items() if r is not None and r.status == "done"]
    return group_machines((fp or {}).get("machine") for fp in recorded_fingerprints(ledger, done).values())


def invalidate(ledger: Any, root: Path, plan: Any, keys: Iterable[str]) -> list[str]:
    """Make ``keys`` and every run of ``plan`` downstream of them pending again, so that the next execution
    runs them with the code installed now. A done run's artifact directory is renamed to
    ``<dir>.stale`` (the previous such copy is replaced), so nothing of the old result is reused. Returns
    the keys made pending."""
    from prism_lab.harness.context import artifact_dir

    deps = plan.dependents()
    todo, seen = list(keys), set()
    while todo:
        key = todo.pop()
        if key in seen:
            continue
        seen.add(key)
        todo.extend(deps.get(key, []))
    reset = []
    for key in sorted(seen, key=list(plan.runs).index):
        run = plan.runs[key]
        if not ledger.set_status(key, "pending", error=None, only_if=("done",)):
            continue
        final = artifact_dir(root, run.kind, key)
        if final.exists():
            aside = final.with_name(final.name + ".stale")
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(final, aside)
        ledger.event("stale", "made pending again: made by other code than the code installed now", run_key=key)
        reset.append(key)
    return reset


def installed_code(package_dir: Path = PACKAGE_DIR) -> dict[str, Any]:
    """The code installed here, whole: every prism_lab source file (path relative to the package -> sha256[:16])
    and the numeric packages' versions. What a Ray node must share with the driver (executors/node_code.py)."""
    sources = {}
    for path in sorted(package_dir.rglob("*.py")):
        digest = _file_hash(str(path)) if "__pycache__" not in path.parts else None
        if digest is not None:  # None: a cache file, or one that vanished while we looked
            sources[path.relative_to(package_dir).as_posix()] = digest
    return {"sources": sources, "packages": {n: _package_version(n) for n in NUMERIC_PACKAGES}}
