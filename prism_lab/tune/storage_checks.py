"""Checks that a study's storage can be used, made before anything is written (no lock file, no
directory, no table): a local file must be an Optuna SQLite database or journal (or not exist yet), never
the ledger or another program's database; an RDB URL must name a known database whose driver is installed.
Each failure is a ConfigError naming the storage and what was expected."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from prism_lab.errors import ConfigError

SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database file
#: Optuna's RDB tables (optuna/storages/_rdb/models.py) and Alembic's migration table; used when the
#: installed Optuna does not expose its models.
OPTUNA_TABLES_FALLBACK = frozenset({
    "studies", "study_directions", "study_system_attributes", "study_user_attributes", "trial_heartbeats",
    "trial_intermediate_values", "trial_params", "trial_system_attributes", "trial_user_attributes",
    "trial_values", "trials", "version_info", "alembic_version"})
EXPECTED = ("expected sqlite:///<new or Optuna .db file>, journal:<new or Optuna journal file> or an RDB URL "
            "such as postgresql://user@host/db")


def optuna_tables() -> frozenset[str]:
    try:
        from optuna.storages._rdb import models
    except ImportError:  # pragma: no cover - a future Optuna that moved its models
        return OPTUNA_TABLES_FALLBACK
    return frozenset(models.BaseModel.metadata.tables) | {"alembic_version"}


def check_local_storage(kind: str, path: Path, *, what: str, ledger: Path) -> None:
    """Refuse a local storage file that is the ledger, a directory, or a file of another kind."""
    if path.expanduser().resolve() == ledger.expanduser().resolve():
        raise ConfigError(f"{what}: {path} is the ledger of the root in use ({ledger}); Optuna would add its "
                          "tables into it: give the study a file of its own (default: <root>/tune/<study>/study.db)")
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory; {EXPECTED}")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{what}: {path} is not a regular file; {EXPECTED}")
    if not path.exists() or path.stat().st_size == 0:
        return  # a new study file (SQLite reads an empty file as an empty database)
    if kind == "sqlite":
        _check_sqlite_file(path, what)
    elif kind == "journal":
        _check_journal_file(path, what)


def _check_sqlite_file(path: Path, what: str) -> None:
    with open(path, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise ConfigError(f"{what}: {path} is not an SQLite database; {EXPECTED}")
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            names = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"{what}: {path} cannot be read as an SQLite database ({exc}); {EXPECTED}") from None
    foreign = sorted(n for n in names if not n.startswith("sqlite_") and n not in optuna_tables())
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ConfigError(f"{what}: {path} is another program's database (tables {shown}), not an Optuna study "
                          "storage; Optuna would add its tables into it: point --storage at a new file")


def _check_journal_file(path: Path, what: str) -> None:
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20)
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ConfigError(f"{what}: {path} is not an Optuna journal (its first line is not a journal record); "
                          f"{EXPECTED}")


def parse_rdb_url(url: str, *, what: str) -> Any:
    """The SQLAlchemy URL of ``url``; refuses one that does not parse."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise ConfigError(f"{what}: cannot parse {url!r} as a database URL; {EXPECTED}") from None


def check_rdb_driver(url: str, *, what: str) -> None:
    """Refuse an RDB URL whose database kind is unknown or whose driver module is not installed."""
    from sqlalchemy.exc import NoSuchModuleError

    parsed = parse_rdb_url(url, what=what)
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        raise ConfigError(f"{what}: unknown database kind {parsed.drivername!r}; {EXPECTED}") from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(f"{what}: the driver of {parsed.drivername!r} is not installed ({exc}); install that "
                          "module, or name an installed driver in the URL (e.g. postgresql+psycopg2://, "
                          "mysql+pymysql://), or use sqlite:///study.db or journal:study.journal") from None
