"""Ctrl-C on the local executor does what it does on Ray (the loop and its cancel are shared,
harness/executors/scheduler.py): the stage process is killed and its run is left pending, then resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from prism_lab.harness.ledger import Ledger, pid_alive
from tests.conftest import REPO, cli_env, run_cli
from tests.harness.test_executor import PLUGIN, executions, statuses, write_grid


def _sigint_as_in_a_terminal() -> None:  # pragma: no cover - runs in the child before exec
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job starts with SIGINT ignored (see test_ray_executor)


def wait_for(pred, what: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not pred():
        assert proc is None or proc.poll() is None, f"driver exited while waiting for {what}: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_row(root: Path, label: str) -> dict:
    led = Ledger(root)
    try:
        row = led.conn.execute("SELECT key, status FROM runs WHERE label=?", (label,)).fetchone()
        return dict(row) | {"events": [e["kind"] for e in led.events(row["key"])]}
    finally:
        led.close()


def test_ctrl_c_kills_the_local_stage_process_and_leaves_its_run_pending(tmp_path):
    hold = tmp_path / "hold"
    hold.write_text("wait")
    grid = write_grid(tmp_path, xs=(1,), hold=str(hold))
    root = tmp_path / "root"
    driver = subprocess.Popen([sys.executable, "-m", "prism_lab.cli", "sweep", "run", str(grid), "--root", str(root),
                               "-q"], env=cli_env(**PLUGIN), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, preexec_fn=_sigint_as_in_a_terminal)
    wait_for(Path(str(hold) + ".reached").exists, "the middle stage", proc=driver)
    led = Ledger(root)
    pid = led.conn.execute("SELECT pid FROM runs WHERE label='middle x=1'").fetchone()["pid"]
    led.close()
    driver.send_signal(signal.SIGINT)  # to the driver alone: its stage process must not need the signal
    out, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err[-3000:]
    wait_for(lambda: not pid_alive(pid), "the stage process to be killed", timeout=20)
    middle = run_row(root, "middle x=1")
    assert middle["status"] == "pending" and "cancelled" in middle["events"], middle
    hold.unlink()
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN))
    assert res.returncode == 0, res.stderr[-3000:]
    assert executions(tmp_path).count("middle:1") == 2 and executions(tmp_path).count("first:None") == 1
    assert set(statuses(root).values()) == {"done"}
