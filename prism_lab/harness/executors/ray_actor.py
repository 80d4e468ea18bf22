"""The Ray actor that holds one stage run's resources and runs its stage process.

A plain class: harness/executors/ray.py wraps it with ``ray.remote`` and creates it as a named, detached
actor, so it outlives a killed driver and a rerun can find it by name. ``run`` is idempotent within one
actor: the first call starts the stage process, every call (from this driver or a later one) waits for it
and returns its exit code.

The stage runs under a keeper (stage_group.py) in a session of its own: when the actor dies (``ray.kill``,
the driver's Ctrl-C, a crashed or killed worker), the keeper kills every process of the stage, torchrun's
agent and ranks and whatever they started, so no GPU stays held by a run Ray thinks is over.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time


class StageActor:
    def __init__(self, args: list[str], env: dict[str, str], log_path: str) -> None:
        # this node's interpreter, which may differ from the driver's; the keeper's parent is this actor
        self.command = [sys.executable, "-m", "prism_lab.harness.executors.stage_group", str(os.getpid()), "--",
                        sys.executable, *args]
        self.env = env
        self.log_path = log_path
        self._lock = threading.Lock()
        self._exited = threading.Event()
        self._started = False
        self._proc: subprocess.Popen | None = None
        self._code: int | None = None

    def _start(self) -> None:
        """Start the stage's keeper and wait for it, in a thread that lives as long as the process
        (the keeper's PR_SET_PDEATHSIG is tied to the thread that started it)."""
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt on {socket.gethostname()} "
                      f"(Ray actor pid {os.getpid()}) =====\n".encode())
            log.flush()
            env = dict(os.environ)
            env.update(self.env)
            try:
                self._proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            except OSError as exc:
                log.write(f"cannot start the stage process: {exc}\n".encode())
                self._code = 127
                self._exited.set()
                return
        self._code = self._proc.wait()
        self._exited.set()

    def run(self) -> int:
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self._start, name="stage-process", daemon=True).start()
        self._exited.wait()
        return int(self._code if self._code is not None else 1)

    def where(self) -> dict:
        """Host, actor pid and stage process pid (None before it started)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "child": self._proc.pid if self._proc else None}
