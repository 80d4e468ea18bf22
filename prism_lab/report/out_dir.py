"""The report's output directory: it writes only what it owns, inside a directory it owns.

A directory is the report's when it is new, empty, or holds the manifest ``.prism-lab-report.json`` a
previous report wrote (the files it wrote, relative to the directory). Any other directory is refused, and
so are the file system's root, the system directories and the home directory itself. A report is written
into a hidden staging directory inside the output directory, then each file is moved into place (an atomic
rename); files of the previous report that the new one does not write are removed, and nothing else is
touched (a user's notes in ``plots/`` stay). The manifest is rewritten atomically before and after the moves,
so it always lists every report file that may be there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from prism_lab.errors import PrismError

MANIFEST = ".prism-lab-report.json"
STAGING_PREFIX = ".prism-lab-report.staging-"
#: Directories a report never writes into, whatever their contents: the root and the system's own places.
SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/media",
                         "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr",
                         "/usr/bin", "/usr/lib", "/usr/local", "/usr/share", "/var", "/var/tmp"})
ASK = "pick a new or empty directory, or one a previous `prism-lab report` wrote"


@dataclass(frozen=True)
class OutDir:
    """A directory the report may write into, and the files its previous report wrote there."""

    path: Path
    label: str  # how the messages name it: "--out DIR" or "report directory DIR"
    owned: frozenset[str]  # relative POSIX paths listed in the manifest (empty for a new directory)


def claim_out_dir(path: Path, *, label: str) -> OutDir:
    """Check, writing nothing, that the report may write into ``path``; PrismError naming it if not."""
    resolved = path.expanduser().resolve()
    if str(resolved) in SYSTEM_DIRS or resolved == Path.home().resolve():
        raise PrismError(f"{label}: {resolved} is the file system's root, a system directory or the home directory; "
                         f"{ASK}")
    if resolved.exists() and not resolved.is_dir():
        raise PrismError(f"{label}: {path} is not a directory; {ASK}")
    if not resolved.exists():
        return OutDir(path, label, frozenset())
    manifest = path / MANIFEST
    if manifest.exists():
        return OutDir(path, label, frozenset(_read_manifest(manifest, label)))
    if any(not p.name.startswith(STAGING_PREFIX) for p in path.iterdir()):
        raise PrismError(f"{label}: {path} is not empty and holds no {MANIFEST} (it is not a report directory); "
                         f"{ASK}")
    return OutDir(path, label, frozenset())


def _read_manifest(manifest: Path, label: str) -> list[str]:
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files")
    except (ValueError, AttributeError, UnicodeDecodeError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) and _is_inside(f) for f in files):
        raise PrismError(f"{label}: {manifest} is not a report manifest (expected JSON with `files`: paths inside "
                         f"the directory); {ASK}")
    return files


def _is_inside(rel: str) -> bool:
    p = PurePosixPath(rel)
    return bool(rel) and not p.is_absolute() and ".." not in p.parts and p.name != MANIFEST


def make_staging(out: OutDir) -> Path:
    """A fresh hidden directory inside ``out`` to write the report into (creates ``out`` if needed)."""
    out.path.mkdir(parents=True, exist_ok=True)
    staging = out.path / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def publish(out: OutDir, staging: Path, *, sweep: str) -> list[str]:
    """Move every file of ``staging`` into ``out`` (replacing only files the manifest lists), remove the
    previous report's files the new one did not write, update the manifest; returns the new file list."""
    new = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    clash = [rel for rel in new if rel not in out.owned and _occupied(out.path, rel)]
    if clash:
        raise PrismError(f"{out.label}: {out.path / clash[0]} exists and was not written by a report; "
                         f"move it away or {ASK}")
    _write_manifest(out.path, sorted(set(new) | out.owned), sweep)
    for rel in new:
        target = out.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target)
    for rel in sorted(out.owned - set(new)):
        gone = out.path / rel
        if gone.is_file() or gone.is_symlink():
            gone.unlink()  # a regenerated report never shows plots of runs that are gone
    _write_manifest(out.path, new, sweep)
    return new


def _occupied(root: Path, rel: str) -> bool:
    """Whether writing ``rel`` would replace something: the file itself, or a non-directory in its way."""
    target = root / rel
    if target.exists() or target.is_symlink():
        return True
    return any(parent.exists() and not parent.is_dir() for parent in _parents_below(root, target))


def _parents_below(root: Path, target: Path) -> Iterable[Path]:
    for parent in target.parents:
        if parent == root:
            return
        yield parent


def _write_manifest(directory: Path, files: list[str], sweep: str) -> None:
    tmp = directory / f"{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"written_by": "prism-lab report", "sweep": sweep, "files": files}, indent=1) + "\n",
                   encoding="utf-8")
    os.replace(tmp, directory / MANIFEST)


def discard(out: OutDir, staging: Path, *, created: bool) -> None:
    """Remove the staging directory, and ``out`` itself when this report created it and left it empty."""
    shutil.rmtree(staging, ignore_errors=True)
    if created:
        try:
            out.path.rmdir()
        except OSError:
            pass
