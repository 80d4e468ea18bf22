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

from prism_lab.errors import ConfigError, PrismError
from prism_lab.tune.storage_checks import check_local_storage, check_rdb_driver, parse_rdb_url


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
    any other ``scheme://`` URL is an Optuna RDB URL (``sqlite+driver:///`` ones are local files too).
    Default: the study's existing storage file if there is one, else SQLite for one worker and a journal
    file for several. A local file is checked here, before any file is made: never the ledger of ``root``,
    never a directory or a file of another kind (storage_checks.py).
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
        url = parse_rdb_url(storage, what="--storage")
        ref = (StorageRef("sqlite", storage, Path(url.database).expanduser())
               if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
               else StorageRef("rdb", storage))
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
    if ref.path is not None:
        what = f"--storage {storage}" if storage is not None else f"the study's storage {ref.url}"
        check_local_storage(ref.kind, ref.path, what=what, ledger=root / "ledger.sqlite")
    return ref


def open_storage(ref: StorageRef) -> Any:
    """The Optuna storage of ``ref``; a database that cannot be opened is a ConfigError naming it."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    if ref.kind == "rdb":
        check_rdb_driver(ref.url, what=f"--storage {_shown(ref.url)}")
    if ref.path is not None:
        ref.path.parent.mkdir(parents=True, exist_ok=True)
    if ref.kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        return optuna.storages.JournalStorage(
            JournalFileBackend(str(ref.path), lock_obj=JournalFileOpenLock(str(ref.path))))
    engine_kwargs = {"connect_args": {"timeout": 60}} if ref.kind == "sqlite" else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(ref.url, engine_kwargs=engine_kwargs)
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise ConfigError(f"--storage {_shown(ref.url)}: cannot open the database ({reason})") from None


def _shown(url: str) -> str:
    """``url`` with its password masked."""
    try:
        return parse_rdb_url(url, what="--storage").render_as_string(hide_password=True)
    except ConfigError:
        return url


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
            created = not self._path.exists()
            with open(self._path, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                except PrismError:
                    if created:  # a refused study (not prism-lab's, another space) leaves no file behind
                        self._path.unlink(missing_ok=True)
                    raise
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
