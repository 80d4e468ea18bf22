"""The local executor with real subprocesses and a test-only stage kind (tests/plugins/chain.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from prism_lab.harness.ledger import Ledger
from tests.conftest import REPO, cli_env, run_cli

PLUGIN = {"PRISM_LAB_PLUGINS": "tests.plugins.chain"}


def write_grid(tmp: Path, *, xs=(1, 2), hold: str = "", fail: str = "") -> Path:
    counter = str(tmp / "executions.log")
    grid = {
        "name": "chain", "pipeline": "test-chain", "axes": {"x": list(xs)},
        "stages": {
            "first": {"counter": counter},
            "middle": {"counter": counter, "hold_file": hold, "fail_if_exists": fail},
            "last": {"counter": counter},
        },
    }
    path = tmp / "chain.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def executions(tmp: Path) -> list[str]:
    p = tmp / "executions.log"
    return p.read_text().splitlines() if p.exists() else []


def statuses(root: Path) -> dict[str, str]:
    led = Ledger(root)
    try:
        return {r["label"]: r["status"] for r in led.conn.execute("SELECT label, status FROM runs")}
    finally:
        led.close()


def test_runs_in_dependency_order_and_skips_done_runs(tmp_path):
    grid = write_grid(tmp_path)
    root = tmp_path / "root"
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "--workers", "2", "-q", env=cli_env(**PLUGIN))
    assert res.returncode == 0, res.stderr
    ex = executions(tmp_path)
    assert sorted(ex) == sorted(["first:None", "middle:1", "middle:2", "last:1", "last:2"])
    assert ex.index("first:None") < ex.index("middle:1") < ex.index("last:1")
    assert set(statuses(root).values()) == {"done"}
    # artifacts: final dirs with run.json, no partial dirs left
    runs_dir = root / "runs" / "test_step"
    finals = [p for p in runs_dir.iterdir() if not p.name.startswith(".")]
    assert len(finals) == 5 and all((p / "run.json").is_file() and (p / "stage.log").is_file() for p in finals)
    assert not [p for p in runs_dir.iterdir() if p.name.endswith(".partial")]
    # no --wandb: the stage processes follow $PRISM_LAB_WANDB (tests/conftest.py sets `disabled`), no W&B run
    assert not [p for p in finals if (p / "wandb").exists()]
    # again: nothing re-executed
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN))
    assert res.returncode == 0, res.stderr
    assert len(executions(tmp_path)) == 5
    assert "0 run(s) finished, 5 already done" in res.stderr


def test_sigkill_mid_stage_then_resume_runs_killed_run_once_more(tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("wait")
    grid = write_grid(tmp_path, xs=(1,), hold=str(hold))
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, "-m", "prism_lab.cli", "sweep", "run", str(grid), "--root", str(root), "-q"],
                            env=cli_env(**PLUGIN), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reached = Path(str(hold) + ".reached")
    deadline = time.time() + 120
    while not reached.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "middle stage never started"
        time.sleep(0.05)
    led = Ledger(root)
    middle = led.conn.execute("SELECT key, pid FROM runs WHERE label LIKE 'middle%'").fetchone()
    led.close()
    os.kill(proc.pid, signal.SIGKILL)  # the executor dies mid-stage
    proc.wait(timeout=30)
    # its stage subprocess dies with it (PDEATHSIG)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            os.kill(middle["pid"], 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    else:
        pytest.fail("stage process outlived its executor")
    assert statuses(root)["middle x=1"] == "running"  # left behind by the killed executor
    hold.unlink()
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN))
    assert res.returncode == 0, res.stderr
    assert "restarted after a crash" in res.stderr
    ex = executions(tmp_path)
    assert ex.count("first:None") == 1  # done before the kill: not run again
    assert ex.count("middle:1") == 2  # killed once, then exactly once more
    assert ex.count("last:1") == 1
    assert set(statuses(root).values()) == {"done"}
    led = Ledger(root)
    attempts = led.conn.execute("SELECT attempts FROM runs WHERE key=?", (middle["key"],)).fetchone()[0]
    events = [e["kind"] for e in led.events(middle["key"])]
    led.close()
    assert attempts == 2 and "restarted" in events


def test_failure_blocks_only_dependents_and_is_retried(tmp_path):
    fail = tmp_path / "fail"
    fail.write_text("x")
    grid = write_grid(tmp_path, xs=(1, 2), fail=str(fail))
    root = tmp_path / "root"
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN))
    assert res.returncode == 1
    st = statuses(root)
    assert st["first"] == "done"
    assert st["middle x=1"] == "failed" and st["middle x=2"] == "failed"
    assert st["last x=1"] == "blocked" and st["last x=2"] == "blocked"
    assert "told to fail" in res.stderr
    # status --format json reports the error and the blocking reason
    js = run_cli("sweep", "status", str(grid), "--root", str(root), "--format", "json", env=cli_env(**PLUGIN))
    import json

    recs = {r["label"]: r for r in json.loads(js.stdout)}
    assert "told to fail" in recs["middle x=1"]["error"]
    assert recs["last x=1"]["error"].startswith("blocked by failed middle x=1")
    # --no-retry-failed leaves them alone
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", "--no-retry-failed", env=cli_env(**PLUGIN))
    assert executions(tmp_path).count("middle:1") == 1
    fail.unlink()
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN))
    assert res.returncode == 0, res.stderr
    assert set(statuses(root).values()) == {"done"}
    assert executions(tmp_path).count("middle:1") == 2 and executions(tmp_path).count("first:None") == 1


def test_two_executors_on_one_root_run_each_stage_once(tmp_path):
    grid = write_grid(tmp_path, xs=(1, 2, 3, 4))
    root = tmp_path / "root"
    procs = [subprocess.Popen([sys.executable, "-m", "prism_lab.cli", "sweep", "run", str(grid), "--root", str(root),
                               "-q", "--workers", "2"], env=cli_env(**PLUGIN), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        p.wait(timeout=300)
        assert p.returncode == 0, p.stderr.read().decode()
    ex = executions(tmp_path)
    assert len(ex) == 9 and len(set(ex)) == 9
    assert set(statuses(root).values()) == {"done"}


def test_dry_run_prints_commands_and_runs_nothing(tmp_path):
    grid = write_grid(tmp_path)
    root = tmp_path / "root"
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "--dry-run", env=cli_env(**PLUGIN))
    assert res.returncode == 0
    assert res.stdout.count("prism_lab.harness.run_stage") == 5
    assert not executions(tmp_path) and not (root / "ledger.sqlite").exists()
    # run by hand, one after another, on the fresh root, the printed commands do the whole sweep
    for line in res.stdout.splitlines():
        cmd = line.split("   # ")[0]
        ran = subprocess.run(cmd, shell=True, env=cli_env(**PLUGIN), cwd=REPO, capture_output=True, text=True)
        assert ran.returncode == 0, (cmd, ran.stderr[-2000:])
    assert sorted(executions(tmp_path)) == sorted(["first:None", "middle:1", "middle:2", "last:1", "last:2"])
    assert set(statuses(root).values()) == {"done"}
    again = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN))
    assert again.returncode == 0 and "0 run(s) finished, 5 already done" in again.stderr


def test_workers_share_the_cores_instead_of_oversubscribing():
    from prism_lab.harness.executors.local import (
        THREAD_ENV_VARS,
        stage_env,
        threads_per_worker,
    )

    assert threads_per_worker(2, cpus=2) == 1
    assert threads_per_worker(1, cpus=2) == 2
    assert threads_per_worker(3, cpus=16) == 5
    assert threads_per_worker(4, cpus=2) == 1  # never 0
    env = stage_env({"PATH": "/bin"}, workers=2, cpus=8)
    assert {v: env[v] for v in THREAD_ENV_VARS} == {v: "4" for v in THREAD_ENV_VARS}
    assert env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"
    assert stage_env({"OMP_NUM_THREADS": "3"}, workers=2, cpus=8)["OMP_NUM_THREADS"] == "3"  # the user's choice stays
    # ... and sizes the pools the user left unset: OpenMP at 1 with BLAS at all cores still oversubscribes
    env = stage_env({"OMP_NUM_THREADS": "1"}, workers=1, cpus=2)
    assert {v: env[v] for v in THREAD_ENV_VARS} == {v: "1" for v in THREAD_ENV_VARS}
    env = stage_env({"MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "2"}, workers=1, cpus=8)
    assert env["OMP_NUM_THREADS"] == "2" and env["MKL_NUM_THREADS"] == "3"  # the smallest the user set
    env = stage_env({"OMP_NUM_THREADS": "", "MKL_NUM_THREADS": "abc"}, workers=2, cpus=8)
    assert env["OPENBLAS_NUM_THREADS"] == "4" and env["MKL_NUM_THREADS"] == "abc"  # unusable values size nothing
