"""The Ray actor's stage process: a small keeper that runs the stage in a session of its own and takes every
process the stage started down with it.

``python -m prism_lab.harness.executors.stage_group PARENT_PID -- COMMAND...`` (ray_actor.py starts it):

- the stage command runs in its own session and process group (``start_new_session``), never in the Ray
  worker's group;
- the keeper is two processes: a relay, the actor's child, that dies with the actor (``PR_SET_PDEATHSIG``) or is
  killed by Ray with it, and its child, the guardian, which Linux sends SIGTERM when the relay dies: the actor
  killed by ``ray.kill`` (Ctrl-C of the driver), its worker crashed or SIGKILLed, its node's raylet gone;
- the guardian is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a process of the stage whose parent dies is
  reparented to the keeper instead of init, so nothing the stage started can slip out of its tree. torchrun
  starts every rank in a session of its own (torch/distributed/elastic/multiprocessing/subprocess_handler),
  so killing one process group would not reach the ranks; the keeper kills the whole tree;
- on that signal (or SIGINT / SIGHUP), and again when the stage command exits, it SIGKILLs every process
  below it; guardian and relay exit with the stage command's status (re-raising its signal when one killed it).

Standard library only: it starts before, and independently of, anything heavy.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)
        except OSError:
            pass


def descendants(root: int, proc: Path = Path("/proc")) -> list[int]:
    """Pids of every process below ``root`` (children first found, then theirs), from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def kill_tree(root: int, *, rounds: int = 50) -> None:
    """SIGKILL every process below ``root`` (this process, a subreaper: orphans come back under it, so a
    few rounds catch processes forked while the first round ran), reaping what dies."""
    for _ in range(rounds):
        pids = descendants(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.02)


def _exit_like(code: int) -> None:
    """Exit as the stage command did: its code, or death by its signal."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code if code >= 0 else 128 - code)


def guard(command: list[str]) -> int:
    """The guardian: run ``command`` in a session of its own, kill the tree below on a signal or once it exits."""
    me = os.getpid()

    def stop(signum: int, _frame: object) -> None:
        kill_tree(me)
        _exit_like(-signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    child = subprocess.Popen(command, start_new_session=True)
    while True:  # reap orphans handed to this subreaper too, until the stage command itself exits
        pid, status = os.waitpid(-1, 0)
        if pid == child.pid:
            child.returncode = code = os.waitstatus_to_exitcode(status)
            break
    kill_tree(me)  # what the stage left behind (a stray rank, a vLLM worker) goes with it
    return code


def main(argv: list[str]) -> int:
    """Two processes: this one, the actor's child, only relays; Ray SIGKILLs a dying worker's direct children
    (ray 2.x ``kill_child_processes_on_worker_exit``), which would leave no one to clean up. Its child, the
    guardian, is told of its death by SIGTERM and takes the stage's whole tree down."""
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m prism_lab.harness.executors.stage_group PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[2:]
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the actor died before the death signal was armed
        return 128 + signal.SIGKILL
    relay = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
            if os.getppid() != relay:
                os._exit(128 + signal.SIGTERM)
            code = guard(command)
        except BaseException:  # noqa: BLE001 - a guardian never returns into the relay's code
            kill_tree(os.getpid())
            os._exit(1)
        _exit_like(code)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    _exit_like(os.waitstatus_to_exitcode(status))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
