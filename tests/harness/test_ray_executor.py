"""The Ray executor against a real local Ray cluster (2 CPUs, 127.0.0.1, its own temp dir), driven through
the CLI in subprocesses, with the test-only stage kind of tests/plugins/chain.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prism_lab.harness.freshness import CODE_EVENT
from prism_lab.harness.ledger import Ledger, pid_alive
from tests.conftest import REPO, cli_env, run_cli
from tests.ray_cluster import DRIVER_ENV, LocalRayCluster
from tests.harness.test_executor import PLUGIN, executions, statuses, write_grid

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    c = LocalRayCluster(cli_env())
    try:
        c.wait_ready()
        yield c
    finally:
        c.stop()


def env() -> dict[str, str]:
    return cli_env(**PLUGIN, **DRIVER_ENV)


def ray_args(cluster: LocalRayCluster, grid: Path, root: Path, *extra: str) -> list[str]:
    return ["sweep", "run", str(grid), "--root", str(root), "--executor", "ray", "--address", cluster.address, "-q",
            *extra]


def _sigint_as_in_a_terminal() -> None:  # pragma: no cover - runs in the child before exec
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: under `pytest &` (or a CI runner that does that) the driver would never see the
    # test's Ctrl-C. The test stands for a user pressing Ctrl-C in a terminal, where SIGINT is default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_driver(cluster: LocalRayCluster, grid: Path, root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prism_lab.cli", *ray_args(cluster, grid, root, *extra)],
                            env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)


def wait_for(pred, what: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver exited ({proc.returncode}) while waiting for {what}: {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_row(root: Path, label: str) -> dict:
    led = Ledger(root)
    try:
        row = led.conn.execute("SELECT key, kind, status, attempts, error FROM runs WHERE label=?", (label,)).fetchone()
        return dict(row) | {"events": [e["kind"] for e in led.events(row["key"])]}
    finally:
        led.close()


def stage_pid(root: Path, label: str) -> int:
    """Pid of the latest attempt's stage process, from the `started` line of its events file."""
    row = run_row(root, label)
    path = root / "runs" / row["kind"] / f".{row['key'][:16]}.partial" / "events.jsonl"
    started = [json.loads(line) for line in path.read_text().splitlines() if '"started"' in line]
    return started[-1]["pid"]


def _stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parent_pid(pid: int) -> int:
    return int(_stat(pid)[1])


def actor_pid(stage: int) -> int:
    """The Ray worker (actor) process above a stage process (Ray titles its workers ``ray::<class>...``)."""
    pid = parent_pid(stage)
    while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
        pid = parent_pid(pid)
        assert pid > 1, "no Ray worker above the stage process"
    return pid


def stage_tree(actor: int) -> dict[int, int]:
    """pid -> process group of every process below the actor: the keeper, the stage and what it started."""
    from prism_lab.harness.executors.stage_group import descendants

    return {pid: int(_stat(pid)[2]) for pid in descendants(actor)}


def leftovers(tree: dict[int, int]) -> list[str]:
    """Processes of that tree, or of its process groups, still alive (zombies count as gone)."""
    groups = set(tree.values())
    out = []
    for entry in Path("/proc").iterdir():
        try:
            fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        except (OSError, IndexError):
            continue
        if fields and fields[0] != "Z" and (int(entry.name) in tree or int(fields[2]) in groups):
            out.append(f"{entry.name} (pgid {fields[2]}): {(entry / 'cmdline').read_bytes()[:200]!r}")
    return out


def test_chain_on_ray_one_ledger_writer_and_shared_storage(cluster, tmp_path):
    grid = write_grid(tmp_path)
    root, storage = tmp_path / "ledger-root", tmp_path / "shared"
    res = run_cli(*ray_args(cluster, grid, root, "--shared-root", str(storage)), env=env())
    assert res.returncode == 0, res.stderr[-3000:]
    ex = executions(tmp_path)
    assert sorted(ex) == sorted(["first:None", "middle:1", "middle:2", "last:1", "last:2"])
    assert ex.index("first:None") < ex.index("middle:1") < ex.index("last:1")
    assert set(statuses(root).values()) == {"done"}
    # artifacts on the storage root, the ledger alone in the ledger root: stage processes never saw it
    assert sorted(p.name for p in root.iterdir()) == ["ledger.sqlite", "ledger.sqlite-shm", "ledger.sqlite-wal"] or \
        sorted(p.name for p in root.iterdir()) == ["ledger.sqlite"]
    finals = [p for p in (storage / "runs" / "test_step").iterdir() if not p.name.startswith(".")]
    assert len(finals) == 5
    for final in finals:
        spec = json.loads((final / "spec.json").read_text())
        assert spec["root"] == str(storage.resolve())
        lines = [json.loads(x) for x in (final / "events.jsonl").read_text().splitlines()]
        # heartbeats come every few seconds of a run, so how many a run writes depends on the machine's speed
        lines = [ev for ev in lines if ev["type"] != "heartbeat"]
        assert [ev["type"] for ev in lines] == ["started", "metrics", "event", "done"]
        assert lines[2]["kind"] == CODE_EVENT  # the code fingerprint, for `sweep status`'s freshness check
    # every metric line was taken into the ledger exactly once, with the driver's events around it
    led = Ledger(root)
    try:
        for row in led.conn.execute("SELECT key, artifact_path, log_path, attempts FROM runs"):
            assert led.metrics(row["key"]) == [(0, "value_seen", 1.0)]
            assert [e["kind"] for e in led.events(row["key"])] == ["submitted", "started", CODE_EVENT]
            assert row["artifact_path"].startswith(str(storage.resolve())) and row["attempts"] == 1
            assert Path(row["log_path"]).is_file()
    finally:
        led.close()
    again = run_cli(*ray_args(cluster, grid, root, "--shared-root", str(storage)), env=env())
    assert again.returncode == 0 and "0 run(s) finished, 5 already done" in again.stderr
    assert len(executions(tmp_path)) == 5


def wait_gone(tree: dict[int, int], timeout: float = 20.0) -> list[str]:
    """What is left of the tree once it died, or after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while (left := leftovers(tree)) and time.time() < deadline:
        time.sleep(0.1)
    return left


def held_at_middle(cluster, tmp_path, *extra: str,
                   sleeper: bool = False) -> tuple[subprocess.Popen, Path, Path, Path, int]:
    """A driver whose middle stage is running and waits for its hold file: (driver, grid, root, hold, stage pid);
    with ``sleeper`` the stage keeps a child process asleep in a session of its own, as torchrun starts each
    rank (Ray's clean-up of its worker's process group does not reach it)."""
    hold = tmp_path / "hold"
    hold.write_text("wait")
    grid = write_grid(tmp_path, xs=(1,), hold=str(hold))
    if sleeper:
        spec = yaml.safe_load(grid.read_text())
        spec["stages"]["middle"]["sleeper"] = True
        grid.write_text(yaml.safe_dump(spec))
    root = tmp_path / "root"
    driver = start_driver(cluster, grid, root, *extra)
    wait_for(Path(str(hold) + ".reached").exists, "the middle stage", proc=driver)
    return driver, grid, root, hold, stage_pid(root, "middle x=1")


def test_driver_sigkill_then_rerun_reattaches_and_runs_nothing_twice(cluster, tmp_path):
    driver, grid, root, hold, pid = held_at_middle(cluster, tmp_path)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    time.sleep(1.0)
    assert pid_alive(pid), "the stage process died with the driver: its actor is not detached"
    assert run_row(root, "middle x=1")["status"] == "running"
    rerun = start_driver(cluster, grid, root)
    wait_for(lambda: "reattached" in run_row(root, "middle x=1")["events"], "the re-attach", proc=rerun)
    hold.unlink()
    out, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err[-3000:]
    ex = executions(tmp_path)
    assert ex.count("first:None") == 1 and ex.count("middle:1") == 1 and ex.count("last:1") == 1
    row = run_row(root, "middle x=1")
    assert row["status"] == "done" and row["attempts"] == 1
    assert set(statuses(root).values()) == {"done"}


def kill_worker_mid_stage(cluster, tmp_path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    """Start a driver, wait for the middle stage (with a sleeping child), SIGKILL the Ray worker (actor) process
    that runs it; check that every process of the stage died with it."""
    driver, grid, root, hold, pid = held_at_middle(cluster, tmp_path, *extra, sleeper=True)
    actor = actor_pid(pid)
    assert actor != driver.pid
    tree = stage_tree(actor)
    assert len(tree) >= 4  # keeper (relay, guardian), the stage process, its child
    Path(str(hold) + ".reached").unlink()
    os.kill(actor, signal.SIGKILL)
    # the actor's death takes its stage down: nothing of the stage's process tree or groups is left
    assert wait_gone(tree) == []
    return driver, hold, root


def test_killed_ray_worker_mid_stage_is_retried(cluster, tmp_path):
    driver, hold, root = kill_worker_mid_stage(cluster, tmp_path, "--worker-retries", "1")
    wait_for(Path(str(hold) + ".reached").exists, "the retried middle stage", proc=driver)
    hold.unlink()
    out, err = driver.communicate(timeout=180)
    assert driver.returncode == 0, err[-3000:]
    assert executions(tmp_path).count("middle:1") == 2 and executions(tmp_path).count("last:1") == 1
    row = run_row(root, "middle x=1")
    assert row["status"] == "done" and row["attempts"] == 2 and "retried" in row["events"]


def test_ray_worker_lost_beyond_retries_fails_and_blocks_dependents(cluster, tmp_path):
    driver, hold, root = kill_worker_mid_stage(cluster, tmp_path, "--worker-retries", "0")
    out, err = driver.communicate(timeout=180)
    hold.unlink()
    assert driver.returncode == 1, err[-3000:]
    middle = run_row(root, "middle x=1")
    assert middle["status"] == "failed" and "Ray worker lost 1 time(s)" in middle["error"]
    assert run_row(root, "last x=1")["status"] == "blocked"
    assert executions(tmp_path).count("middle:1") == 1


def test_ctrl_c_cancels_the_ray_runs_and_leaves_a_resumable_ledger(cluster, tmp_path):
    driver, grid, root, hold, pid = held_at_middle(cluster, tmp_path, sleeper=True)
    tree = stage_tree(actor_pid(pid))
    assert len(tree) >= 4  # keeper (relay, guardian), the stage process, its child
    driver.send_signal(signal.SIGINT)
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err[-3000:]
    # ray.kill of the actor takes the whole stage down: every process below it, every process group
    assert wait_gone(tree) == []
    middle = run_row(root, "middle x=1")
    assert middle["status"] == "pending" and "cancelled" in middle["events"]
    hold.unlink()
    res = run_cli(*ray_args(cluster, grid, root), env=env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert executions(tmp_path).count("middle:1") == 2 and executions(tmp_path).count("first:None") == 1
    assert set(statuses(root).values()) == {"done"}


def test_tune_on_ray_parallel_trials_share_a_stage_run(cluster, tmp_path):
    from tests.tune.test_tune import PLUGIN as TUNE_PLUGIN
    from tests.tune.test_tune import executions as tune_executions
    from tests.tune.test_tune import tune_cmd, write_base, write_space

    write_base(tmp_path)
    space = write_space(tmp_path)
    root = tmp_path / "root"
    res = subprocess.run(tune_cmd(space, root, "--trials", "2", "--workers", "2", "--executor", "ray", "--address",
                                  cluster.address), env=cli_env(PRISM_LAB_PLUGINS=TUNE_PLUGIN, **DRIVER_ENV), cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 complete" in res.stderr
    ex = tune_executions(tmp_path)
    assert ex.count("shared") == 1 and sum(e.startswith("trial ") for e in ex) == 2 and ex.count("eval") == 2
    led = Ledger(root)
    try:
        rows = list(led.conn.execute("SELECT key, kind, status FROM runs"))
        assert len(rows) == 5 and {r["status"] for r in rows} == {"done"}
        for r in rows:  # every stage ran as a Ray actor, its metrics taken in by the driver
            assert "submitted" in [e["kind"] for e in led.events(r["key"])]
            if r["kind"] == "tune_eval":
                assert "eval/avg/accuracy" in led.last_metrics(r["key"])
    finally:
        led.close()


def test_two_process_run_goes_under_torchrun_in_one_actor_and_infeasible_gpus_fail_at_once(cluster, tmp_path):
    from tests.harness.test_resources import _grid

    grid = _grid(tmp_path, {"processes": 2})  # 2 CPUs: the whole test cluster, so the two runs take turns
    root = tmp_path / "root"
    settings = {"PRISM_JUDGE_URL": "http://judge.invalid/v1", "LMUData": str(tmp_path / "lmu"), "NCCL_DEBUG": "WARN"}
    res = run_cli(*ray_args(cluster, grid, root), env={**env(), **settings})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [line.split("\t") for line in (tmp_path / "executions.log.placement").read_text().splitlines()]
    # the driver's judge, benchmark directory and NCCL settings reach every rank on the node (the cluster's own
    # environment has none of them)
    assert {tuple(r[7:10]) for r in rows} == {tuple(settings.values())}
    assert sorted((r[1], r[2], r[3]) for r in rows) == [("1", "0", "2"), ("1", "1", "2"), ("2", "0", "2"),
                                                        ("2", "1", "2")]  # (value, rank, world size)
    spans = sorted((min(float(r[5]) for r in rows if r[1] == v), max(float(r[6]) for r in rows if r[1] == v))
                   for v in ("1", "2"))
    assert spans[0][1] <= spans[1][0] + 1e-3  # each asked Ray for 2 CPUs: never both at once
    assert set(statuses(root).values()) == {"done"}
    assert "(2 CPU, 0 GPU)" in " ".join(
        e for e in _event_messages(root, "middle x=1") if e.startswith("Ray actor"))
    # a run asking for GPUs no node has fails at once (Ray would queue it forever), dependents blocked
    (tmp_path / "gpu").mkdir()
    gpu_grid = _grid(tmp_path / "gpu", {"processes": 2, "gpus": 2})
    res = run_cli(*ray_args(cluster, gpu_grid, tmp_path / "gpu-root"), env=env(), timeout=120)
    assert res.returncode == 1
    middle = run_row(tmp_path / "gpu-root", "middle x=1")
    assert middle["status"] == "failed" and "needs 2 CPU(s) and 2 GPU(s) on one node" in middle["error"]
    assert run_row(tmp_path / "gpu-root", "last x=1")["status"] == "blocked"


def _event_messages(root: Path, label: str) -> list[str]:
    led = Ledger(root)
    try:
        key = led.conn.execute("SELECT key FROM runs WHERE label=?", (label,)).fetchone()["key"]
        return [e["message"] for e in led.events(key)]
    finally:
        led.close()


def test_a_driver_whose_code_differs_from_the_nodes_is_refused_before_anything_is_written(cluster, tmp_path):
    """The cluster's node runs this checkout; the driver runs a copy with one changed file."""
    import shutil

    copy = tmp_path / "driver-code"
    shutil.copytree(REPO / "prism_lab", copy / "prism_lab", ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "prism_lab" / "report" / "__init__.py", "a") as fh:
        fh.write("\n# edited on the driver only\n")
    root = tmp_path / "root"
    driver_env = {**env(), "PYTHONPATH": f"{copy}{os.pathsep}{env()['PYTHONPATH']}"}
    # from the copy's directory: `python -m` puts the working directory first on sys.path
    res = run_cli(*ray_args(cluster, write_grid(tmp_path), root), env=driver_env, timeout=180, cwd=copy)
    assert res.returncode == 2, res.stderr[-3000:]
    node = res.stderr.split("Ray node ", 1)[-1].split(" runs", 1)[0]
    assert res.stderr.strip() == (f"prism-lab: error: Ray node {node} runs other prism-lab code than this driver (1 source "
                                  "file(s) differ: prism_lab/report/__init__.py); install the same prism-lab on every "
                                  "node and the driver")
    assert "(127.0.0.1)" in node and not root.exists() and executions(tmp_path) == []
