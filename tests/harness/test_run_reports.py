"""Stage runs that report through an events file instead of the ledger (the Ray executor's channel), and
the Ray executor's pure helpers; no Ray cluster needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prism_lab.errors import PrismError
from prism_lab.harness.context import artifact_dir, partial_dir
from prism_lab.harness.freshness import CODE_EVENT
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.run_reports import EventFile, RunSpec, ingest, read_events
from tests.conftest import REPO, cli_env

KEY = "ab" * 32


def test_read_events_leaves_a_half_written_line_for_later(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "heartbeat", "ts": 1}\n{"type": "metr')
    events, offset = read_events(path, 0)
    assert events == [{"type": "heartbeat", "ts": 1}] and offset == len('{"type": "heartbeat", "ts": 1}\n')
    with open(path, "a") as fh:
        fh.write('ics", "step": 3, "values": {"loss": 0.5}}\n')
    events, offset2 = read_events(path, offset)
    assert events == [{"type": "metrics", "step": 3, "values": {"loss": 0.5}}] and offset2 == path.stat().st_size
    assert read_events(path, offset2) == ([], offset2)
    assert read_events(tmp_path / "missing.jsonl", 7) == ([], 7)


def test_ingest_takes_every_line_into_the_ledger_once(tmp_path):
    led = Ledger(tmp_path / "root")
    led.add_run(KEY, "test_step", "one", {}, {})
    led.claim(KEY, owner_pid=1)
    events = EventFile(tmp_path / "events.jsonl")
    events.started(1)
    events.log_metrics(KEY, 0, {"loss": 2.0, "acc": 0.25})
    events.heartbeat(KEY)
    assert ingest(led, KEY, events.path) == []
    events.log_metrics(KEY, 1, {"loss": 1.5})
    events.log_item_scores(KEY, "bench", {"q1": 1.0, "q2": 0.0})
    events.failed("boom")
    terminal = ingest(led, KEY, events.path)
    assert ingest(led, KEY, events.path) == []  # nothing new: nothing taken in twice
    assert [t["type"] for t in terminal] == ["failed"] and terminal[0]["error"] == "boom"
    assert led.metrics(KEY) == [(0, "loss", 2.0), (0, "acc", 0.25), (1, "loss", 1.5)]
    assert led.item_scores([KEY]) == {KEY: {"bench": {"q1": 1.0, "q2": 0.0}}}
    assert [e["kind"] for e in led.events(KEY)] == ["started"]
    assert led.get_run(KEY).heartbeat_at == pytest.approx(json.loads(events.path.read_text().splitlines()[2])["ts"])
    assert led.reports_offset(KEY) == events.path.stat().st_size
    led.close()


def test_spec_mode_stage_run_never_opens_a_ledger(tmp_path):
    storage = tmp_path / "storage"
    counter = tmp_path / "executions.log"
    work = partial_dir(storage, "test_step", KEY)
    work.mkdir(parents=True)
    spec = RunSpec(key=KEY, kind="test_step", label="solo", config={"name": "solo", "counter": str(counter)},
                   attempt=3, root=str(storage), sweeps=["chain"], cells=["c1"])
    spec.write(work / "spec.json")
    res = subprocess.run([sys.executable, "-m", "prism_lab.harness.run_stage", "--spec", str(work / "spec.json")],
                         env=cli_env(PRISM_LAB_PLUGINS="tests.plugins.chain"), cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    final = artifact_dir(storage, "test_step", KEY)
    assert not work.exists() and json.loads((final / "run.json").read_text())["attempts"] == 3
    lines = [json.loads(x) for x in (final / "events.jsonl").read_text().splitlines()]
    assert [ev["type"] for ev in lines] == ["started", "metrics", "event", "done"]
    assert lines[0]["attempt"] == 3 and lines[1]["values"] == {"value_seen": 1.0}
    assert lines[2]["kind"] == CODE_EVENT and json.loads(lines[2]["message"]) == json.loads(
        (final / "run.json").read_text())["code"]
    assert lines[3]["artifact_path"] == str(final)
    assert counter.read_text() == "solo:None\n"
    assert not list(tmp_path.rglob("*.sqlite*"))
    # a second start finds the finished artifact and only reports it done again
    spec.write(work.parent / "spec-again.json")
    res = subprocess.run([sys.executable, "-m", "prism_lab.harness.run_stage", "--spec",
                          str(work.parent / "spec-again.json")], env=cli_env(PRISM_LAB_PLUGINS="tests.plugins.chain"),
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and counter.read_text() == "solo:None\n"


def test_stage_resources_and_command():
    from prism_lab.harness.executors.ray import RunResources, stage_args, stage_resources

    assert stage_resources({}) == RunResources(processes=1, gpus=0, cpus=1)
    assert stage_resources({"resources": {"processes": 4, "gpus": 4}}) == RunResources(processes=4, gpus=4, cpus=4)
    assert stage_resources({"resources": {"processes": 2, "cpus": 16}}) == RunResources(processes=2, gpus=0, cpus=16)
    assert stage_args(REPO / "s.json", RunResources()) == ["-m", "prism_lab.harness.run_stage", "--spec",
                                                           str(REPO / "s.json")]
    two = stage_args(REPO / "s.json", RunResources(processes=2))
    assert two[:4] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] and two[4:6] == ["-m",
                                                                                                       "prism_lab.harness.run_stage"]


def test_namespace_is_one_per_storage_root(tmp_path):
    from prism_lab.harness.executors.ray import namespace_for

    assert namespace_for(tmp_path / "a") == namespace_for(tmp_path / "x" / ".." / "a")
    assert namespace_for(tmp_path / "a") != namespace_for(tmp_path / "b")


def test_a_bad_or_silent_address_is_one_error_not_a_hang():
    from prism_lab.harness.executors.ray import check_address

    with pytest.raises(PrismError, match="expected HOST:PORT"):
        check_address("nowhere")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PrismError, match="no Ray head node answers"):
        check_address(f"127.0.0.1:{port}", timeout=2)
    check_address("auto")


def test_a_spec_carries_the_ancestors_rows_a_stage_reads_of_the_ledger(tmp_path):
    from prism_lab.harness.run_stage import spec_from_ledger
    from prism_lab.stages.lineage import _upstream

    led = Ledger(tmp_path / "root")
    led.add_run("d" * 64, "data", "data", {"n": 1}, {}, status="done", artifact_path="/shared/data")
    led.add_run("s" * 64, "sft", "sft", {"lr": 1.0}, {"data": "d" * 64}, status="done", artifact_path="/shared/sft")
    led.add_run(KEY, "eval", "eval", {}, {"checkpoint": "s" * 64})
    spec = spec_from_ledger(led, tmp_path / "shared", KEY)
    led.close()
    spec.write(tmp_path / "spec.json")
    events = EventFile(tmp_path / "events.jsonl", RunSpec.read(tmp_path / "spec.json").upstream)
    chain = _upstream(events, KEY)
    assert [r.kind for r in chain] == ["eval", "sft"]
    assert chain[1].artifact_path == "/shared/sft" and chain[1].config == {"lr": 1.0}
    assert events.get_run("d" * 64).inputs == {} and events.get_run("nope") is None
