"""The stage process reports through one interface (harness/run_reports.py RunReports), implemented by the
ledger and by the events file alike: run_stage.py calls its methods and never asks which one it has."""

from __future__ import annotations

import ast
import inspect

from prism_lab.harness import run_stage
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.run_reports import EventFile, RunReports


def protocol_methods() -> list[str]:
    return [name for name, _ in inspect.getmembers(RunReports, inspect.isfunction) if not name.startswith("_")]


def test_ledger_and_event_file_implement_every_method_of_the_reporter():
    names = protocol_methods()
    assert {"report_failed", "move_to", "for_thread", "close", "mark_done", "heartbeat"} <= set(names)
    for impl in (Ledger, EventFile):
        for name in names:
            got = inspect.signature(getattr(impl, name))
            want = inspect.signature(getattr(RunReports, name))
            extra = list(got.parameters)[len(want.parameters):]  # optional extras (the ledger's event(sweep=))
            assert list(got.parameters)[:len(want.parameters)] == list(want.parameters), (impl.__name__, name, got)
            assert all(got.parameters[p].default is not inspect.Parameter.empty for p in extra), (impl.__name__, name)


def test_run_stage_never_branches_on_the_reporter_type():
    tree = ast.parse(inspect.getsource(run_stage))
    checks = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "isinstance"
              and any(name in ast.unparse(n) for name in ("EventFile", "Ledger", "RunReports"))]
    assert checks == []


def test_both_reporters_record_a_failure_and_give_a_heartbeat_reporter(tmp_path):
    led = Ledger(tmp_path / "root")
    led.add_run("k" * 64, "data", "data", {}, {})
    led.claim("k" * 64, owner_pid=1)
    beats = led.for_thread()
    assert beats is not led and beats.path == led.path  # its own connection: SQLite connections stay in one thread
    beats.heartbeat("k" * 64)
    beats.close()
    led.report_failed("k" * 64, "boom")
    row = led.get_run("k" * 64)
    assert row.status == "failed" and row.error == "boom"
    assert [e["kind"] for e in led.events("k" * 64)] == ["failed"]
    led.close()
    events = EventFile(tmp_path / "events.jsonl")
    assert events.for_thread() is events
    events.report_failed("k" * 64, "boom")
    (tmp_path / "final").mkdir()
    events.move_to(tmp_path / "final")
    events.heartbeat("k" * 64)
    assert '"failed"' in (tmp_path / "events.jsonl").read_text()
    assert '"heartbeat"' in (tmp_path / "final" / "events.jsonl").read_text()
