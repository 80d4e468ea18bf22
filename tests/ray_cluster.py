"""A real local Ray cluster for tests: `ray start --head --block` on 127.0.0.1 with 2 CPUs and its own temp
dir, stopped by signalling only the processes it started (never `ray stop`, which stops every Ray
instance on the machine).

Ray rewrites 127.0.0.1 to the machine's routable address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
(ray 2.60, ray/_private/services.py `get_node_ip_address`); with it the head listens on loopback only, and
every driver connecting to it must have the same setting (`DRIVER_ENV`).

Token authentication is pinned off (RAY_AUTH_MODE=disabled) unless a test asks for it with ``token_path``:
otherwise whether the head enables it would depend on a ~/.ray/auth_token left by some earlier private
``ray.init()`` (ray 2.60, ray/_private/authentication/authentication_token_setup.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DRIVER_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def token_env(token_path: Path) -> dict[str, str]:
    """What a head node and its drivers need for token authentication with the token in that file."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    def __init__(self, env: dict[str, str], num_cpus: int = 2, token_path: Path | None = None) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="prl-ray-"))  # short: Ray's unix sockets live under it
        self.address = f"127.0.0.1:{_free_port()}"
        self.log = self.temp_dir / "head.log"
        ray_bin = Path(sys.executable).with_name("ray")
        cmd = [str(ray_bin), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
               "--port", self.address.rsplit(":", 1)[1], "--num-cpus", str(num_cpus), "--num-gpus", "0",
               "--temp-dir", str(self.temp_dir), "--include-dashboard", "false", "--disable-usage-stats"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, env={**env, **DRIVER_ENV, **(token_env(token_path) if token_path else {})}, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while "Ray runtime started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def _leftovers(self) -> list[int]:
        """Processes of this cluster still alive: every Ray process names its temp dir on its command line."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if str(self.temp_dir).encode() in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        for pid in self._leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
