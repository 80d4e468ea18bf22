"""Issue 17 item 5: after `prism-lab eval` is killed with SIGKILL, the same eval can be run again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import cli_env
from tests.hostile.conftest import cli


def test_a_killed_eval_can_be_rerun(session, ws):
    args = ["eval", session.checkpoint, "-b", "synth-reasoning", "--bench-dir", ws.data / "bench", "--root", ws.root,
            "--limit", "2", "--max-new-tokens", "4", "--format", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "prism_lab.cli", *map(str, args)], cwd=ws.dir, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        partial = ws.root / "runs" / "eval"
        while time.time() < deadline and proc.poll() is None:
            if any(p.name.endswith(".partial") for p in partial.glob(".*")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the eval finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    res = cli(*args, cwd=ws.dir, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert out["metrics"]["eval/synth-reasoning/n"] == 2
