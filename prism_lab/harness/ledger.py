"""The ledger: one SQLite file (WAL) per root with sweeps, cells, runs, metrics and events.

Safe with several processes writing at once: every write is a short IMMEDIATE transaction, readers
never block writers (WAL), and run claims are compare-and-set updates.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import LedgerError
from prism_lab.harness.ledger_schema import SCHEMA, SCHEMA_VERSION

STATUSES = ("pending", "running", "done", "failed", "blocked")


@dataclass
class RunRow:
    key: str
    kind: str
    label: str
    config: dict[str, Any]
    inputs: dict[str, str]
    status: str
    attempts: int
    started_at: float | None
    finished_at: float | None
    heartbeat_at: float | None
    host: str | None
    owner_pid: int | None
    pid: int | None
    artifact_path: str | None
    log_path: str | None
    error: str | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "RunRow":
        return cls(
            key=row["key"], kind=row["kind"], label=row["label"], config=json.loads(row["config_json"]),
            inputs=json.loads(row["inputs_json"]), status=row["status"], attempts=row["attempts"],
            started_at=row["started_at"], finished_at=row["finished_at"], heartbeat_at=row["heartbeat_at"],
            host=row["host"], owner_pid=row["owner_pid"], pid=row["pid"], artifact_path=row["artifact_path"],
            log_path=row["log_path"], error=row["error"],
        )


class Ledger:
    """Open (and create or migrate) ``<root>/ledger.sqlite``."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        self.root = Path(root)
        self.path = self.root / "ledger.sqlite"
        if not create and not self.path.exists():
            raise FileNotFoundError(self.path)
        self._check_file()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self._create()
        try:
            self.conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout=60000")
            self._check_version()  # before anything is written: a ledger we cannot read stays as it was
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a readable prism-lab ledger ({exc}); move it away to start a new "
                              "ledger, or pass another --root") from None

    def _create(self) -> None:
        """Write a new ledger with its schema under a temporary name and link it into place, so that no
        process ever sees a half-created (empty) ledger; when another process wins the race, use its."""
        tmp = self.root / f".ledger.sqlite.new-{os.getpid()}-{time.time_ns()}"
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            for stmt in filter(None, (s.strip() for s in SCHEMA.split(";"))):
                conn.execute(stmt)
            conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
        finally:
            for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                leftover.unlink(missing_ok=True)

    def _check_file(self) -> None:
        """A path that exists must be a non-empty SQLite file (an empty one is a ledger that was lost)."""
        if not self.path.exists():
            if self.root.exists() and not self.root.is_dir():
                raise LedgerError(f"{self.root}: expected a directory for the ledger and runs, found a file")
            return
        if not self.path.is_file():
            raise LedgerError(f"{self.path}: expected the ledger file, found a directory or special file")
        if self.path.stat().st_size == 0:
            raise LedgerError(f"{self.path}: the ledger file is empty (0 bytes), its records are lost; move it "
                              "away to start a new ledger")

    def _check_version(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            return
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
            if "meta" in tables else None
        if row is None:
            raise LedgerError(f"{self.path}: an SQLite file without a prism-lab schema version (not a ledger)")
        try:
            version = int(row["value"])
        except ValueError:
            raise LedgerError(f"{self.path}: meta.schema_version: expected an integer, got {row['value']!r}") from None
        if version > SCHEMA_VERSION:
            raise LedgerError(f"{self.path}: meta.schema_version: ledger schema version {version} is newer than "
                              f"this prism-lab's ({SCHEMA_VERSION}); upgrade prism-lab")

    @classmethod
    def open_existing(cls, root: str | Path) -> "Ledger | None":
        """The ledger under ``root`` if there is one; never creates a file."""
        try:
            return cls(root, create=False)
        except FileNotFoundError:
            return None

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front (no upgrade deadlocks)."""
        for attempt in range(50):
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 49:
                    raise
                time.sleep(0.05 * (attempt + 1))
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.tx() as c:
            for stmt in filter(None, (s.strip() for s in SCHEMA.split(";"))):
                c.execute(stmt)
            row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: ledger schema version {row['value']} is newer than this prism-lab "
                    f"({SCHEMA_VERSION}); upgrade prism-lab"
                )

    # ---- plan ---------------------------------------------------------------------------------------
    def record_plan(self, plan: Any) -> None:
        """Insert the sweep, its cells and every stage run (existing runs keep their status)."""
        now = time.time()
        grid = plan.grid
        grid_file = str(Path(grid.path).resolve())
        with self.tx() as c:
            known = c.execute("SELECT grid_path FROM sweeps WHERE name=?", (grid.name,)).fetchone()
            if known is not None and Path(known[0]).is_absolute() and known[0] != grid_file:
                raise LedgerError(f"{grid.path}: name: sweep {grid.name!r} is already recorded in {self.path} from "
                                  f"another grid file ({known[0]}); give this grid its own `name:`")
            c.execute(
                "INSERT INTO sweeps(name, grid_path, grid_json, created_at, updated_at) VALUES (?,?,?,?,?) "
                "ON CONFLICT(name) DO UPDATE SET grid_path=excluded.grid_path, grid_json=excluded.grid_json, "
                "updated_at=excluded.updated_at",
                (grid.name, grid_file, grid.spec.model_dump_json(), now, now),
            )
            c.execute("DELETE FROM cells WHERE sweep=?", (grid.name,))
            c.execute("DELETE FROM cell_runs WHERE sweep=?", (grid.name,))
            c.executemany(
                "INSERT INTO cells(sweep, cell_id, axes_json, ordinal) VALUES (?,?,?,?)",
                [(grid.name, cell.id, json.dumps(cell.axes), i) for i, cell in enumerate(plan.cells)],
            )
            c.executemany(
                "INSERT INTO cell_runs(sweep, cell_id, role, run_key) VALUES (?,?,?,?)",
                [(grid.name, cell.id, role, key) for cell in plan.cells for role, key in cell.runs.items()],
            )
            c.executemany(
                "INSERT OR IGNORE INTO runs(key, kind, label, config_json, inputs_json, status, created_at) "
                "VALUES (?,?,?,?,?,'pending',?)",
                [(r.key, r.kind, r.label, json.dumps(r.config, sort_keys=True), json.dumps(r.inputs), now)
                 for r in plan.runs.values()],
            )

    def add_run(self, key: str, kind: str, label: str, config: dict, inputs: dict[str, str], *,
                status: str = "pending", artifact_path: str | None = None) -> None:
        """Insert one run outside any sweep (an ad-hoc evaluation, an external checkpoint); no-op if present."""
        with self.tx() as c:
            c.execute(
                "INSERT OR IGNORE INTO runs(key, kind, label, config_json, inputs_json, status, created_at, "
                "artifact_path, finished_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (key, kind, label, json.dumps(config, sort_keys=True), json.dumps(inputs), status, time.time(),
                 artifact_path, time.time() if status == "done" else None),
            )

    # ---- runs ---------------------------------------------------------------------------------------
    def get_run(self, key: str) -> RunRow | None:
        row = self.conn.execute("SELECT * FROM runs WHERE key=?", (key,)).fetchone()
        return None if row is None else RunRow.from_row(row)

    def get_runs(self, keys: Iterable[str]) -> dict[str, RunRow]:
        keys = list(keys)
        out: dict[str, RunRow] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(f"SELECT * FROM runs WHERE key IN ({marks})", chunk):
                out[row["key"]] = RunRow.from_row(row)
        return out

    def claim(self, key: str, *, owner_pid: int, allowed: tuple[str, ...] = ("pending",)) -> bool:
        """Atomically move a run to `running` for this executor. False if someone else has it."""
        marks = ",".join("?" * len(allowed))
        with self.tx() as c:
            cur = c.execute(
                f"UPDATE runs SET status='running', attempts=attempts+1, started_at=?, heartbeat_at=?, "
                f"host=?, owner_pid=?, pid=NULL, error=NULL, finished_at=NULL WHERE key=? AND status IN ({marks})",
                (time.time(), time.time(), socket.gethostname(), owner_pid, key, *allowed),
            )
            return cur.rowcount == 1

    def set_status(self, key: str, status: str, *, error: str | None = None, only_if: tuple[str, ...] = ()) -> bool:
        assert status in STATUSES
        sql = "UPDATE runs SET status=?, error=?"
        args: list[Any] = [status, error]
        if status in ("done", "failed"):
            sql += ", finished_at=?"
            args.append(time.time())
        sql += " WHERE key=?"
        args.append(key)
        if only_if:
            sql += f" AND status IN ({','.join('?' * len(only_if))})"
            args.extend(only_if)
        with self.tx() as c:
            return c.execute(sql, args).rowcount == 1

    def set_process(self, key: str, *, pid: int | None, log_path: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE runs SET pid=?, log_path=?, heartbeat_at=? WHERE key=?",
                      (pid, log_path, time.time(), key))

    def heartbeat(self, key: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE runs SET heartbeat_at=? WHERE key=? AND status='running'", (time.time(), key))

    def mark_done(self, key: str, artifact_path: str, *, log_path: str | None = None) -> None:
        with self.tx() as c:
            c.execute(
                "UPDATE runs SET status='done', artifact_path=?, finished_at=?, error=NULL, "
                "log_path=COALESCE(?, log_path) WHERE key=?",
                (artifact_path, time.time(), log_path, key),
            )

    def adopt(self, key: str, *, owner_pid: int) -> bool:
        """A running run changes owner (a driver re-attaching to a stage its killed predecessor started)."""
        with self.tx() as c:
            return c.execute("UPDATE runs SET owner_pid=?, host=? WHERE key=? AND status='running'",
                             (owner_pid, socket.gethostname(), key)).rowcount == 1

    # ---- the rest of a stage process's reporter interface (harness/run_reports.py RunReports) ----------
    def report_failed(self, key: str, message: str) -> None:
        """The stage process failed: its running run becomes failed, with an event saying why."""
        self.set_status(key, "failed", error=message, only_if=("running",))
        self.event("failed", message, run_key=key)

    def move_to(self, directory: Path) -> None:
        """The run directory was renamed; the ledger does not live in it (nothing to do)."""

    def for_thread(self) -> "Ledger":
        """A reporter for another thread (a heartbeat): a connection of its own to the same file."""
        return Ledger(self.root)

    # ---- reports of stage processes that do not write the ledger (harness/run_reports.py) ------------
    def reports_offset(self, key: str) -> int:
        """How far the run's events file has been taken in (bytes)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (f"reports_offset:{key}",)).fetchone()
        return int(row["value"]) if row else 0

    def ingest_reports(self, key: str, offset: int, *, metrics: list[tuple[int, dict[str, float]]],
                       events: list[tuple[str, str]], heartbeat: float | None,
                       item_scores: list[tuple[str, dict[str, float]]] = ()) -> None:
        """Metrics, item scores, events and a heartbeat read from a run's events file, with the new read
        offset, in one transaction."""
        now = time.time()
        with self.tx() as c:
            c.executemany("INSERT INTO metrics(run_key, step, name, value, ts) VALUES (?,?,?,?,?)",
                          [(key, int(step), name, None if v is None else float(v), now)
                           for step, values in metrics for name, v in values.items()])
            c.executemany("INSERT INTO events(ts, run_key, kind, message) VALUES (?,?,?,?)",
                          [(now, key, kind, message) for kind, message in events])
            for benchmark, scores in item_scores:
                _put_item_scores(c, key, benchmark, scores)
            if heartbeat is not None:
                c.execute("UPDATE runs SET heartbeat_at=? WHERE key=? AND status='running'", (heartbeat, key))
            c.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                      (f"reports_offset:{key}", str(offset)))

    # ---- metrics and events -------------------------------------------------------------------------
    def log_metrics(self, key: str, step: int, values: dict[str, float]) -> None:
        now = time.time()
        rows = [(key, int(step), name, None if v is None else float(v), now) for name, v in values.items()]
        with self.tx() as c:
            c.executemany("INSERT INTO metrics(run_key, step, name, value, ts) VALUES (?,?,?,?,?)", rows)

    def metrics(self, key: str) -> list[tuple[int, str, float]]:
        return [(r["step"], r["name"], r["value"]) for r in self.conn.execute(
            "SELECT step, name, value FROM metrics WHERE run_key=? ORDER BY step, rowid", (key,))]

    def last_metrics(self, key: str) -> dict[str, float]:
        """The latest value of every metric of a run."""
        rows = self.conn.execute(
            "SELECT name, value FROM metrics WHERE rowid IN "
            "(SELECT MAX(rowid) FROM metrics WHERE run_key=? GROUP BY name)", (key,))
        return {r["name"]: r["value"] for r in rows}

    def log_item_scores(self, key: str, benchmark: str, scores: dict[str, float]) -> None:
        """Per-item scores of one benchmark of an eval run (replacing earlier ones: a retried run rewrites
        them); the report's paired item bootstrap reads them."""
        with self.tx() as c:
            _put_item_scores(c, key, benchmark, scores)

    def item_scores(self, keys: Iterable[str]) -> dict[str, dict[str, dict[str, float]]]:
        """run key -> benchmark -> item -> score, for the runs that have item scores."""
        out: dict[str, dict[str, dict[str, float]]] = {}
        for key in set(keys):
            for r in self.conn.execute("SELECT benchmark, item, score FROM item_scores WHERE run_key=?", (key,)):
                out.setdefault(key, {}).setdefault(r["benchmark"], {})[r["item"]] = r["score"]
        return out

    def event(self, kind: str, message: str, *, run_key: str | None = None, sweep: str | None = None) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO events(ts, run_key, sweep, kind, message) VALUES (?,?,?,?,?)",
                      (time.time(), run_key, sweep, kind, message))

    def events(self, run_key: str | None = None) -> list[sqlite3.Row]:
        if run_key is None:
            return list(self.conn.execute("SELECT * FROM events ORDER BY id"))
        return list(self.conn.execute("SELECT * FROM events WHERE run_key=? ORDER BY id", (run_key,)))

    def latest_events(self, kind: str, keys: Iterable[str]) -> dict[str, str | None]:
        """run key -> the message of its latest event of ``kind`` (None when it has none)."""
        keys = list(keys)
        out: dict[str, str | None] = dict.fromkeys(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.conn.execute(f"SELECT run_key, message FROM events WHERE kind=? AND run_key IN ({marks}) "
                                         "ORDER BY id", (kind, *chunk)):
                out[row["run_key"]] = row["message"]
        return out

    # ---- sweeps -------------------------------------------------------------------------------------
    def memberships(self, key: str) -> list[tuple[str, str]]:
        """(sweep, cell id) of every cell that uses run ``key``."""
        return [(r["sweep"], r["cell_id"]) for r in
                self.conn.execute("SELECT DISTINCT sweep, cell_id FROM cell_runs WHERE run_key=?", (key,))]

    def cell_axes(self, key: str) -> list[dict[str, Any]]:
        """The grid axes of every cell that uses run ``key``."""
        rows = self.conn.execute(
            "SELECT DISTINCT c.axes_json FROM cells c JOIN cell_runs r ON r.sweep = c.sweep AND r.cell_id = c.cell_id "
            "WHERE r.run_key=?", (key,))
        return [json.loads(r["axes_json"]) for r in rows]

    def sweep_names(self) -> list[str]:
        return [r["name"] for r in self.conn.execute("SELECT name FROM sweeps ORDER BY name")]

    def sweep(self, name: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM sweeps WHERE name=?", (name,)).fetchone()

    def cells(self, sweep: str) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
        """(cell_id, axes, role -> run key) for every cell of a sweep, in grid order."""
        roles: dict[str, dict[str, str]] = {}
        for r in self.conn.execute("SELECT cell_id, role, run_key FROM cell_runs WHERE sweep=?", (sweep,)):
            roles.setdefault(r["cell_id"], {})[r["role"]] = r["run_key"]
        return [(r["cell_id"], json.loads(r["axes_json"]), roles.get(r["cell_id"], {}))
                for r in self.conn.execute("SELECT * FROM cells WHERE sweep=? ORDER BY ordinal", (sweep,))]


def _put_item_scores(c: sqlite3.Connection, key: str, benchmark: str, scores: dict[str, float]) -> None:
    c.execute("DELETE FROM item_scores WHERE run_key=? AND benchmark=?", (key, benchmark))
    c.executemany("INSERT INTO item_scores(run_key, benchmark, item, score) VALUES (?,?,?,?)",
                  [(key, benchmark, str(i), float(v)) for i, v in scores.items()])


def run_is_stale(row: RunRow, *, host: str | None = None, stale_after: float = 120.0) -> bool:
    """Whether a `running` run's claim is left over from a process that died (kill -9, a crash).

    On the claiming host: neither the owner nor the stage process is alive. Elsewhere: no heartbeat
    for ``stale_after`` seconds."""
    if row.host == (host or socket.gethostname()):
        return not pid_alive(row.owner_pid) and not pid_alive(row.pid)
    return row.heartbeat_at is None or time.time() - row.heartbeat_at > stale_after


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
