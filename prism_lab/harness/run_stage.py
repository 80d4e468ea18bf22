"""Entry point of one stage run in its own process.

``python -m prism_lab.harness.run_stage --root R [--grid G] KEY`` (local executor, or by hand): the run
comes from the ledger under R and the process reports into it. With ``--grid`` a run that is not in the
ledger yet is planned from that grid first, so the commands ``sweep run --dry-run`` prints work on a fresh
root.

``python -m prism_lab.harness.run_stage --spec DIR/spec.json`` (Ray executor): the run comes from the spec
file and the process never opens the ledger; it appends its reports to DIR/events.jsonl, which the
executor takes in (see harness/run_reports.py).

Either way it runs the stage kind's runner with a StageContext, writes run.json, renames the in-progress
directory to the final one, and reports the run done. On error it reports a one-line error and exits 1
(the traceback is in the run's log).

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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from prism_lab.errors import PrismError
from prism_lab.harness.context import InputArtifact, StageContext, artifact_dir, partial_dir
from prism_lab.harness.freshness import CODE_EVENT, code_fingerprint
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.plugins import load_plugins
from prism_lab.harness.provenance import git_commit, host_info, package_versions
from prism_lab.harness.run_reports import EventFile, RunReports, RunSpec, UpstreamRun
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


def _heartbeat_loop(reports: RunReports, key: str, stop: threading.Event) -> None:
    """Heartbeats every few seconds, through a reporter of this thread's own."""
    beats = reports.for_thread()
    try:
        while not stop.wait(HEARTBEAT_SECONDS):
            beats.heartbeat(key)
    finally:
        if beats is not reports:
            beats.close()


def complete_run_json(path: Path, key: str) -> bool:
    """True when ``path/run.json`` exists and names ``key`` (a finished artifact)."""
    try:
        return json.loads((path / "run.json").read_text())["key"] == key
    except (OSError, ValueError, KeyError):
        return False


def run_axes(ledger: Ledger, key: str) -> dict[str, Any]:
    """The grid axes of a stage run: the values shared by every cell that uses it (an SFT run shared by
    both alignments and every algorithm has only size and seed)."""
    cells = ledger.cell_axes(key)
    if not cells:
        return {}
    return {k: v for k, v in cells[0].items() if all(c.get(k, object()) == v for c in cells[1:])}


def axis_tags(axes: dict[str, Any]) -> list[str]:
    """W&B tags ``axis=value`` (W&B allows at most 64 characters per tag)."""
    return [f"{k}={v}"[:64] for k, v in axes.items()]


def spec_from_ledger(ledger: Ledger, root: Path, key: str) -> RunSpec | None:
    """The spec of a run recorded in the ledger (an input that is not done has no path)."""
    run = ledger.get_run(key)
    if run is None:
        return None
    inputs = {}
    for role, dep in run.inputs.items():
        row = ledger.get_run(dep)
        done = row is not None and row.status == "done" and bool(row.artifact_path)
        inputs[role] = {"key": dep, "kind": row.kind if row else "?", "config": row.config if row else {},
                        "path": row.artifact_path if done else None}
    memberships = ledger.memberships(key)
    return RunSpec(key=key, kind=run.kind, label=run.label, config=run.config, attempt=run.attempts, root=str(root),
                   inputs=inputs, sweeps=sorted({sweep for sweep, _ in memberships}),
                   cells=list(dict.fromkeys(cell for _, cell in memberships)), axes=run_axes(ledger, key),
                   upstream=_upstream_rows(ledger, key))


def _upstream_rows(ledger: Ledger, key: str) -> dict[str, dict[str, Any]]:
    """The ledger rows of a run and all its ancestors (what a stage may read of the ledger)."""
    rows, stack = {}, [key]
    while stack:
        k = stack.pop()
        row = ledger.get_run(k)
        if row is None or k in rows:
            continue
        rows[k] = {f.name: getattr(row, f.name) for f in fields(UpstreamRun) if f.name != "key"}
        stack.extend(row.inputs.values())
    return rows


def _inputs(spec: RunSpec) -> dict[str, InputArtifact]:
    inputs = {}
    for role, inp in spec.inputs.items():
        if not inp.get("path"):
            raise PrismError(f"input {role!r} ({inp['key'][:12]}) of {spec.label} is not done")
        inputs[role] = InputArtifact(inp["key"], inp["kind"], Path(inp["path"]), inp["config"])
    return inputs


def run_spec(spec: RunSpec, reports: RunReports) -> int:
    """Run one stage run described by ``spec``, reporting to ``reports``; the process exit code."""
    root, key = Path(spec.root), spec.key
    final = artifact_dir(root, spec.kind, key)
    if complete_run_json(final, key):  # finished before a crash could record it
        reports.move_to(final)
        code = json.loads((final / "run.json").read_text()).get("code")
        if code is not None:
            reports.event(CODE_EVENT, json.dumps(code, sort_keys=True), run_key=key)
        reports.mark_done(key, str(final), log_path=str(final / "stage.log"))
        return 0
    work = partial_dir(root, spec.kind, key)
    work.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    threading.Thread(target=_heartbeat_loop, args=(reports, key, stop), daemon=True).start()
    started = time.time()
    tracker = None
    try:
        kind = STAGE_KINDS.get(spec.kind)
        config = kind.config_model().model_validate(spec.config)
        inputs = _inputs(spec)
        tracker = Tracker(reports, key, kind=spec.kind, label=spec.label, config={"axes": spec.axes, **spec.config},
                          run_dir=work, group=spec.sweeps[0] if spec.sweeps else None, tags=axis_tags(spec.axes))
        ctx = StageContext(key=key, kind=spec.kind, label=spec.label, config=config, inputs=inputs, out_dir=work,
                           root=root, ledger=reports, tracker=tracker, attempt=spec.attempt)
        print(f"[prism-lab] {spec.label} ({key[:12]}) attempt {spec.attempt} started", flush=True)
        summary = kind.load_runner()(ctx) or {}
        tracker.summary(summary)
        tracker.finish()
        tracker = None
        code = code_fingerprint()  # every module the runner imported is loaded by now
        record = {
            "key": key, "kind": spec.kind, "label": spec.label, "config": spec.config,
            "inputs": {r: {"key": a.key, "path": str(a.path)} for r, a in inputs.items()},
            "summary": summary, "attempts": spec.attempt, "started_at": started, "finished_at": time.time(),
            "git_commit": git_commit(), "packages": package_versions(), "host": host_info(),
            "stage_version": kind.version, "code": code,
        }
        record = {**ctx.record, **record}
        (work / "run.json").write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
        reports.move_to(final)
        reports.event(CODE_EVENT, json.dumps(code, sort_keys=True), run_key=key)
        reports.mark_done(key, str(final), log_path=str(final / "stage.log"))
        print(f"[prism-lab] {spec.label} done in {time.time() - started:.1f}s -> {final}", flush=True)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must be reported
        traceback.print_exc()
        msg = str(exc) if isinstance(exc, PrismError) else f"{type(exc).__name__}: {exc}"
        msg = " ".join(msg.split())[:500]
        try:
            reports.report_failed(key, msg)
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


def follow(spec: RunSpec, reports: RunReports) -> int:
    """Run the stage's runner as a follower rank (torchrun ``RANK`` > 0): it shares the work with rank 0
    through the process group; rank 0 records the outcome."""
    root = Path(spec.root)
    if complete_run_json(artifact_dir(root, spec.kind, spec.key), spec.key):
        return 0  # rank 0 sees the same and returns without running
    try:
        kind = STAGE_KINDS.get(spec.kind)
        config = kind.config_model().model_validate(spec.config)
        ctx = FollowerContext(key=spec.key, kind=spec.kind, label=spec.label, config=config, inputs=_inputs(spec),
                              out_dir=partial_dir(root, spec.kind, spec.key), root=root, ledger=reports, tracker=None,
                              attempt=spec.attempt)
        kind.load_runner()(ctx)
        return 0
    except BaseException:  # noqa: BLE001 - rank 0 records the failure; torchrun stops the others
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def execute(root: Path, key: str, *, grid: Path | None = None) -> int:
    """Ledger mode: the run's row comes from the ledger under ``root`` and the reports go into it."""
    ledger = Ledger(root)
    try:
        if grid is not None and ledger.get_run(key) is None:
            from prism_lab.harness.planning import build_plan, load_grid

            ledger.record_plan(build_plan(load_grid(grid)))
        spec = spec_from_ledger(ledger, root, key)
        if spec is None:
            print(f"prism-lab: no run {key} in {ledger.path}" + ("" if grid else " (pass --grid to plan it)"),
                  file=sys.stderr)
            return 2
        if _rank() != 0:
            return follow(spec, ledger)
        if ledger.get_run(key).status in ("pending", "failed", "blocked"):  # started by hand, not by an executor
            ledger.claim(key, owner_pid=os.getpid(), allowed=("pending", "failed", "blocked"))
            spec.attempt = ledger.get_run(key).attempts
        return run_spec(spec, ledger)
    finally:
        ledger.close()


def execute_spec(path: Path) -> int:
    """Spec mode: the run comes from ``path``; the reports go to events.jsonl next to it."""
    spec = RunSpec.read(path)
    events = EventFile(Path(path).parent / "events.jsonl", spec.upstream)
    if _rank() != 0:
        return follow(spec, events)
    events.started(spec.attempt)
    return run_spec(spec, events)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m prism_lab.harness.run_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="ledger mode: the root holding ledger.sqlite and runs/")
    parser.add_argument("--grid", type=Path, help="ledger mode: plan this grid first if KEY is not in the ledger")
    parser.add_argument("--spec", type=Path, help="spec mode: the run's spec.json (no ledger access)")
    parser.add_argument("key", nargs="?")
    args = parser.parse_args(argv)
    if (args.spec is None) == (args.root is None or args.key is None):
        parser.error("give either --root ROOT KEY or --spec SPEC")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        load_plugins()
        if args.spec is not None:
            return execute_spec(args.spec)
        return execute(args.root, args.key, grid=args.grid)
    except PrismError as exc:
        print(f"prism-lab: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
