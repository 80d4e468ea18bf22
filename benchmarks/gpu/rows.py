"""The rows of ``benchmarks/gpu/check.py``'s table, the wall-clock guard, and launching one checked process.

Every row ends as ``ok``, ``failed: <one line>`` or ``skipped: <why>``; nothing a row does can stop the table.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GB = 1e9


@dataclass
class Row:
    """One line of the table: what was checked, how it ended, and its figures (GB; None: not measured)."""

    name: str
    status: str = "skipped: not run"
    seconds: float | None = None
    measured_gb: float | None = None  # peak GPU memory measured (per device, the largest rank)
    planned_gb: float | None = None  # the memory planner's figure for the same settings
    detail: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")


def one_line(text: str, limit: int = 200) -> str:
    """The last non-empty line of ``text`` (an error message or a log), whitespace squeezed, cut to ``limit``."""
    lines = [" ".join(s.split()) for s in str(text).splitlines() if s.strip()]
    line = lines[-1] if lines else "(no output)"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _gb(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(rows: list[Row]) -> str:
    """Fixed-width table: row, status, seconds, measured GB, planned GB, planned/measured, detail."""
    head = f"{'check':<30} {'status':<10} {'s':>5} {'meas GB':>8} {'plan GB':>8} {'plan/meas':>9}  detail"
    out = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r.planned_gb / r.measured_gb:.2f}" if r.planned_gb and r.measured_gb else "-"
        status, _, why = r.status.partition(": ")
        detail = "; ".join(x for x in (why, r.detail) if x)
        secs = "-" if r.seconds is None else f"{r.seconds:.0f}"
        out.append(f"{r.name:<30} {status:<10} {secs:>5} {_gb(r.measured_gb):>8} {_gb(r.planned_gb):>8} "
                   f"{ratio:>9}  {detail}")
    return "\n".join(out)


class Guard:
    """The wall-clock budget of the whole check: each row gets what is left, less a reserve for the table."""

    def __init__(self, budget_s: float, reserve_s: float = 5.0, clock=time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + budget_s
        self.reserve = reserve_s

    def left(self, until: float | None = None) -> float:
        end = self.deadline if until is None else min(until, self.deadline)
        return end - self.clock() - self.reserve

    def allows(self, need_s: float, until: float | None = None) -> bool:
        return self.left(until) >= need_s

    def at(self, fraction: float) -> float:
        """A point in time ``fraction`` of the way from now to the deadline (a sub-budget's end)."""
        now = self.clock()
        return now + fraction * (self.deadline - now)


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a checked process: the repository first on the path, no W&B, no hub."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(PRISM_LAB_WANDB="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def run_process(cmd: list[str], log: Path, timeout_s: float, env: dict[str, str]) -> tuple[int, float]:
    """(exit code, seconds) of ``cmd`` with its output in ``log``; past ``timeout_s`` its whole process group
    (torchrun and its ranks; it gets a session of its own) is killed and the code is 124."""
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            rc = 124
    return rc, time.monotonic() - t0


def log_error(log: Path) -> str:
    """The most telling line of a failed process's log: the last ``...Error: ...`` line, else the last line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return f"no log at {log}"
    errors = [s for s in text.splitlines() if "Error" in s.split(":", 1)[0] or s.startswith("error")]
    return one_line(errors[-1] if errors else text)


def torchrun(nproc: int, script: Path | str, *args: str) -> list[str]:
    """``script`` under torchrun (also for one process: vLLM's external launcher reads torchrun's environment)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script),
            *args]
