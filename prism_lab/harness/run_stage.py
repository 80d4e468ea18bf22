"""Entry point of one stage run in its own process: ``python -m prism_lab.harness.run_stage --root R KEY``.

It reads the run from the ledger, runs the stage kind's runner with a StageContext, writes run.json,
renames the in-progress directory to the final one, and marks the run done. On error it records a
one-line error in the ledger and exits 1 (the traceback is in the run's log).

Under torchrun (a stage whose ``resources.processes`` > 1) every rank runs this module: rank 0 does
all of the above, the other ranks only run the runner with a :class:`FollowerContext`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.errors import PrismError
from prism_lab.harness.context import (
    InputArtifact,
    StageContext,
    artifact_dir,
    partial_dir,
)
from prism_lab.harness.freshness import CODE_EVENT, code_fingerprint
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.plugins import load_plugins
from prism_lab.harness.provenance import git_commit, host_info, package_versions
from prism_lab.harness.stage_kinds import STAGE_KINDS
from prism_lab.harness.tracking import Tracker

HEARTBEAT_SECONDS = 5.0


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the executor that started us dies (no orphaned stage runs)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _heartbeat_loop(ledger_root: Path, key: str, stop: threading.Event) -> None:
    ledger = Ledger(ledger_root)
    try:
        while not stop.wait(HEARTBEAT_SECONDS):
            ledger.heartbeat(key)
    finally:
        ledger.close()


def complete_run_json(path: Path, key: str) -> bool:
    """True when ``path/run.json`` exists and names ``key`` (a finished artifact)."""
    try:
        return json.loads((path / "run.json").read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def run_axes(ledger: Ledger, key: str) -> dict[str, Any]:
    """The grid axes of a stage run: the values shared by every cell that uses it (an SFT run shared by
    both alignments and every algorithm has only size and seed)."""
    rows = ledger.conn.execute(
        "SELECT DISTINCT c.axes_json FROM cells c JOIN cell_runs r ON r.sweep = c.sweep AND r.cell_id = c.cell_id "
        "WHERE r.run_key=?", (key,)).fetchall()
    cells = [json.loads(r["axes_json"]) for r in rows]
    if not cells:
        return {}
    return {k: v for k, v in cells[0].items() if all(c.get(k, object()) == v for c in cells[1:])}


def axis_tags(axes: dict[str, Any]) -> list[str]:
    """W&B tags ``axis=value`` (W&B allows at most 64 characters per tag)."""
    return [f"{k}={v}"[:64] for k, v in axes.items()]


def execute(root: Path, key: str) -> int:
    ledger = Ledger(root)
    run = ledger.get_run(key)
    if run is None:
        print(f"prism-lab: no run {key} in {ledger.path}", file=sys.stderr)
        return 2
    final = artifact_dir(root, run.kind, key)
    if complete_run_json(final, key):  # finished before a crash could record it
        code = json.loads((final / "run.json").read_text()).get("code")
        if code is not None:
            ledger.event(CODE_EVENT, json.dumps(code, sort_keys=True), run_key=key)
        ledger.mark_done(key, str(final), log_path=str(final / "stage.log"))
        return 0
    work = partial_dir(root, run.kind, key)
    work.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(root, key, stop), daemon=True)
    beat.start()
    started = time.time()
    tracker = None
    try:
        kind = STAGE_KINDS.get(run.kind)
        config = kind.config_model().model_validate(run.config)
        inputs = {}
        for role, dep in run.inputs.items():
            dep_run = ledger.get_run(dep)
            if dep_run is None or dep_run.status != "done" or not dep_run.artifact_path:
                raise PrismError(f"input {role!r} ({dep[:12]}) of {run.label} is not done")
            inputs[role] = InputArtifact(dep, dep_run.kind, Path(dep_run.artifact_path), dep_run.config)
        sweeps = [r["sweep"] for r in ledger.conn.execute("SELECT DISTINCT sweep FROM cell_runs WHERE run_key=?", (key,))]
        axes = run_axes(ledger, key)
        tracker = Tracker(ledger, key, kind=run.kind, label=run.label, config={"axes": axes, **run.config},
                          run_dir=work, group=sweeps[0] if sweeps else None, tags=axis_tags(axes))
        ctx = StageContext(key=key, kind=run.kind, label=run.label, config=config, inputs=inputs, out_dir=work,
                           root=root, ledger=ledger, tracker=tracker, attempt=run.attempts)
        print(f"[prism-lab] {run.label} ({key[:12]}) attempt {run.attempts} started", flush=True)
        summary = kind.load_runner()(ctx) or {}
        tracker.summary(summary)
        tracker.finish()
        tracker = None
        code = code_fingerprint()  # every module the runner imported is loaded by now
        record = {
            "key": key, "kind": run.kind, "label": run.label, "config": run.config,
            "inputs": {r: {"key": a.key, "path": str(a.path)} for r, a in inputs.items()},
            "summary": summary, "attempts": run.attempts, "started_at": started, "finished_at": time.time(),
            "git_commit": git_commit(), "packages": package_versions(), "host": host_info(),
            "stage_version": kind.version, "code": code,
        }
        (work / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        ledger.event(CODE_EVENT, json.dumps(code, sort_keys=True), run_key=key)
        ledger.mark_done(key, str(final), log_path=str(final / "stage.log"))
        print(f"[prism-lab] {run.label} done in {time.time() - started:.1f}s -> {final}", flush=True)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the ledger
        traceback.print_exc()
        msg = str(exc) if isinstance(exc, PrismError) else f"{type(exc).__name__}: {exc}"
        msg = " ".join(msg.split())[:500]
        try:
            ledger.set_status(key, "failed", error=msg, only_if=("running",))
            ledger.event("failed", msg, run_key=key)
        except Exception:  # noqa: BLE001
            pass
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        stop.set()
        if tracker is not None:
            try:
                tracker.finish()
            except Exception:  # noqa: BLE001
                pass
        sys.stdout.flush()
        sys.stderr.flush()


def _rank() -> int:
    """This process's rank when torchrun started it (``RANK``), else 0."""
    return int(os.environ.get("RANK", "0") or 0)


@dataclass
class FollowerContext(StageContext):
    """What ranks other than 0 of a multi-process run get: the same config, inputs and directory, but
    metrics, heartbeats, the ledger record, run.json and the final rename are rank 0's alone."""

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def heartbeat(self) -> None:
        pass


def follow(root: Path, key: str) -> int:
    """Run the stage's runner as a follower rank (torchrun ``RANK`` > 0): it shares the work with rank 0
    through the process group; rank 0 records the outcome."""
    ledger = Ledger(root)
    try:
        run = ledger.get_run(key)
        if run is None:
            print(f"prism-lab: no run {key} in {ledger.path}", file=sys.stderr)
            return 2
        if complete_run_json(artifact_dir(root, run.kind, key), key):
            return 0  # rank 0 sees the same and returns without running
        kind = STAGE_KINDS.get(run.kind)
        config = kind.config_model().model_validate(run.config)
        inputs = {}
        for role, dep in run.inputs.items():
            dep_run = ledger.get_run(dep)
            if dep_run is None or not dep_run.artifact_path:
                raise PrismError(f"input {role!r} ({dep[:12]}) of {run.label} is not done")
            inputs[role] = InputArtifact(dep, dep_run.kind, Path(dep_run.artifact_path), dep_run.config)
        ctx = FollowerContext(key=key, kind=run.kind, label=run.label, config=config, inputs=inputs,
                              out_dir=partial_dir(root, run.kind, key), root=root, ledger=ledger, tracker=None,
                              attempt=run.attempts)
        kind.load_runner()(ctx)
        return 0
    except BaseException:  # noqa: BLE001 - rank 0 records the failure; torchrun stops the others
        traceback.print_exc()
        return 1
    finally:
        ledger.close()
        sys.stdout.flush()
        sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m prism_lab.harness.run_stage", description=__doc__)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    load_plugins()
    return execute(args.root, args.key) if _rank() == 0 else follow(args.root, args.key)


if __name__ == "__main__":
    sys.exit(main())
