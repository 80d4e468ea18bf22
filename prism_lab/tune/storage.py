"""Where a study lives (SQLite, a journal file, or an RDB URL), opening it, and the lock that serialises
"decide whether to start a trial + ask" among the tuner's threads and processes."""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError


@dataclass(frozen=True)
class StorageRef:
    """Where a study lives: ``sqlite`` (one file, one worker), ``journal`` (file, many workers) or
    ``rdb`` (PostgreSQL/MySQL URL, many workers on many hosts)."""

    kind: str
    url: str  # sqlite:///..., postgresql://..., or the journal file path
    path: Path | None = None  # local file, for sqlite and journal

    @property
    def dashboard(self) -> str:
        return f"optuna-dashboard {self.url if self.kind != 'journal' else self.path}"

    @property
    def parallel_ok(self) -> bool:
        return self.kind != "sqlite"


def resolve_storage(storage: str | None, *, root: Path, study: str, workers: int) -> StorageRef:
    """Parse ``--storage`` or choose the default under ``<root>/tune/<study>/``.

    Forms: ``sqlite:///path.db`` or ``path.db|.sqlite|.sqlite3``; ``journal:path`` or ``path.journal|.log``;
    any other ``scheme://`` URL is an Optuna RDB URL. Default: the study's existing storage file if there
    is one, else SQLite for one worker and a journal file for several.
    """
    if storage is None:
        base = root / "tune" / study
        db, journal = base / "study.db", base / "study.journal"
        if db.exists() and journal.exists():
            raise ConfigError(f"--storage: both {db} and {journal} exist; name the one to use")
        if db.exists():
            ref = StorageRef("sqlite", f"sqlite:///{db}", db)
        elif journal.exists() or workers > 1:
            ref = StorageRef("journal", str(journal), journal)
        else:
            ref = StorageRef("sqlite", f"sqlite:///{db}", db)
    elif storage.startswith("journal:"):
        p = Path(storage[len("journal:"):].removeprefix("//")).expanduser()
        ref = StorageRef("journal", str(p), p)
    elif storage.startswith("sqlite:///"):
        p = Path(storage[len("sqlite:///"):]).expanduser()
        ref = StorageRef("sqlite", f"sqlite:///{p}", p)
    elif "://" in storage:
        ref = StorageRef("rdb", storage)
    elif storage.endswith((".journal", ".log")):
        p = Path(storage).expanduser()
        ref = StorageRef("journal", str(p), p)
    elif storage.endswith((".db", ".sqlite", ".sqlite3")):
        p = Path(storage).expanduser()
        ref = StorageRef("sqlite", f"sqlite:///{p}", p)
    else:
        raise ConfigError(f"--storage: cannot tell the kind of {storage!r}; use sqlite:///study.db (one worker), "
                          "journal:study.journal (parallel workers on one file system) or an RDB URL "
                          "such as postgresql://user@host/db")
    if workers > 1 and not ref.parallel_ok:
        raise ConfigError(
            f"--workers {workers}: the study's storage {ref.url} is SQLite, which fails with 'database is "
            "locked' under concurrent writers; use --storage journal:<file> (or an RDB URL), or --workers 1"
        )
    return ref


def open_storage(ref: StorageRef) -> Any:
    import optuna

    if ref.path is not None:
        ref.path.parent.mkdir(parents=True, exist_ok=True)
    if ref.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        return optuna.storages.JournalStorage(
            JournalFileBackend(str(ref.path), lock_obj=JournalFileOpenLock(str(ref.path))))
    engine_kwargs = {"connect_args": {"timeout": 60}} if ref.kind == "sqlite" else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(ref.url, engine_kwargs=engine_kwargs)


class StudyLock:
    """Serialises 'decide whether to start a trial + ask + suggest' among threads and (for local file
    storages) processes. Remote RDB storages get the thread lock only: concurrent processes on
    different hosts may then overshoot ``--trials`` by at most one trial each."""

    def __init__(self, ref: StorageRef) -> None:
        self._thread_lock = threading.Lock()
        self._path = None if ref.path is None else ref.path.with_name(ref.path.name + ".tune-lock")

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._path is None:
                yield
                return
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._path, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
