"""The Ray stage keeper (harness/executors/stage_group.py) on its own: it relays the stage command's exit and
leaves nothing the command started behind, even a process that detached into a session of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, cli_env

KEEPER = [sys.executable, "-m", "prism_lab.harness.executors.stage_group", str(os.getpid()), "--"]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_keeper_relays_the_exit_and_kills_what_the_stage_left_behind(tmp_path):
    pidfile = tmp_path / "detached.pid"
    # the stage starts a process in a session of its own (out of reach of a process-group kill) and exits 3
    script = (f"import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              f"start_new_session=True); open({str(pidfile)!r}, 'w').write(str(p.pid)); sys.exit(3)")
    res = subprocess.run([*KEEPER, sys.executable, "-c", script], env=cli_env(), cwd=REPO, timeout=60)
    assert res.returncode == 3
    detached = int(pidfile.read_text())
    deadline = time.time() + 5
    while _alive(detached) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(detached), "the detached process outlived its stage"


def test_keeper_dies_as_its_stage_did():
    res = subprocess.run([*KEEPER, sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
                         env=cli_env(), cwd=REPO, timeout=60)
    assert res.returncode == -signal.SIGTERM
