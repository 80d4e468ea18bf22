"""Issue 17 item 7: usage errors, bad ledgers and bad output places are one line, exit 2, no traceback,
nothing written."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.hostile.conftest import assert_user_error, cli, snapshot

USAGE = {
    "workers-0": (["sweep", "run", "{grid}", "--workers", "0"], "--workers"),
    "format-xml": (["sweep", "plan", "{grid}", "--format", "xml"], "--format"),
    "unknown-command": (["frobnicate"], "frobnicate"),
    "unknown-option": (["sweep", "plan", "{grid}", "--colour"], "--colour"),
    "missing-option": (["eval", "{grid}"], "--benchmark"),
    "missing-argument": (["sweep", "status"], "'grid'"),
    "synth-seed-abc": (["data", "synth", "--out", "{out}", "--config", "synth.yaml", "--seed", "abc"], "--seed"),
}


@pytest.mark.parametrize("name", list(USAGE))
def test_usage_errors_are_one_line(ws, name):
    args, needle = USAGE[name]
    out = ws.dir / "synth-out"
    args = [a.format(grid=ws.dir / "base.yaml", out=out) for a in args]
    res = cli(*args, "--root", ws.root, cwd=ws.dir) if args[0] == "sweep" else cli(*args, cwd=ws.dir)
    assert_user_error(res, needle)
    assert snapshot(ws.root) is None and snapshot(out) is None


def test_a_bad_collective_timeout_is_refused_before_any_stage(ws):
    """$PRISM_LAB_COLLECTIVE_TIMEOUT_S is read by every sharded stage process: a bad value is refused by the
    pre-flight (sweep run's and tune's), not by the first stage that joins a process group."""
    res = cli("sweep", "run", ws.dir / "base.yaml", "--root", ws.root, cwd=ws.dir,
              PRISM_LAB_COLLECTIVE_TIMEOUT_S="ten minutes")
    assert_user_error(res, "$PRISM_LAB_COLLECTIVE_TIMEOUT_S: expected a positive number of seconds")
    assert snapshot(ws.root) is None


def _newer_schema(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    con.commit()
    con.close()


LEDGERS = {
    "corrupt": lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\xde\xad\xbe\xef" * 1000),
    "garbage": lambda p: p.write_bytes(b"this is not a database\n" * 100),
    "zero-byte": lambda p: p.write_bytes(b""),
    "directory": lambda p: p.mkdir(),
    "newer-schema": _newer_schema,
}


@pytest.mark.parametrize("name", list(LEDGERS))
@pytest.mark.parametrize("command", ["status", "run"])
def test_a_bad_ledger_is_one_line_and_left_alone(ws, name, command):
    ws.root.mkdir()
    LEDGERS[name](ws.root / "ledger.sqlite")
    before = snapshot(ws.root)
    grid = ws.dir / "base.yaml"
    if command == "status":
        res = cli("sweep", "status", grid, "--root", ws.root, cwd=ws.dir)
    else:
        res = ws.run(grid, "--stages", "data", timeout=300)
    assert_user_error(res, "ledger.sqlite")
    assert snapshot(ws.root) == before


def test_a_root_that_is_a_file_is_refused(ws):
    ws.root.write_text("precious\n")
    assert_user_error(ws.run(ws.dir / "base.yaml", "--stages", "data"), "--root")
    assert ws.root.read_text() == "precious\n"


def test_an_unwritable_root_is_refused(ws):
    res = cli("sweep", "run", ws.dir / "base.yaml", "--root", "/proc/prism-lab-root", "--stages", "data", "-q",
              cwd=ws.dir)
    assert_user_error(res, "/proc/prism-lab-root")


def test_data_synth_into_an_unwritable_place_is_refused(ws):
    res = cli("data", "synth", "--out", "/proc/prism-lab-data", "--config", ws.dir / "synth.yaml", cwd=ws.dir)
    assert_user_error(res, "/proc/prism-lab-data")


def test_report_into_an_unwritable_place_is_refused(session, ws):
    shutil.copytree(session.root, ws.root)
    before = snapshot(ws.root)
    res = cli("report", "hostile", "--root", ws.root, "--out", "/proc/prism-lab-report", cwd=ws.dir)
    assert_user_error(res, "/proc/prism-lab-report")
    assert snapshot(ws.root) == before
