"""End to end on the smoke grid (slow): the session's one run of it (tests/conftest.py `smoke_root`, every real
stage, W&B offline): its status, W&B runs and report, and the same runs under CPU load."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from prism_lab.harness.ledger import Ledger
from tests.conftest import ONE_THREAD, REPO, cli_env, run_cli
from tests.wandb_offline import history

# the session's smoke run (tests/conftest.py `smoke_root`) and the reruns take minutes on 2 cores: past the
# suite's default 600 s per test, which would also count the shared fixture's set-up
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_every_stage_ran_once_and_is_done(smoke_root, tmp_path):
    res = run_cli("sweep", "status", "experiments/smoke.yaml", "--root", str(smoke_root), "--format", "json")
    runs = json.loads(res.stdout)
    assert sorted(r["kind"] for r in runs) == sorted(["data", "base", "sft", "disc_warmup", "align", "rl", "rl"]
                                                    + ["eval"] * 5)
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in runs), [(r["label"], r["status"]) for r in runs]
    for r in runs:
        if r["kind"] in ("base", "sft", "align", "rl"):
            assert (REPO / r["artifact_path"] / "model" / "model.safetensors").is_file() or \
                (smoke_root / r["artifact_path"] / "model" / "model.safetensors").is_file()
        if r["kind"] == "eval":
            assert {"eval/avg/accuracy", "eval/synth-reasoning/format_rate", "eval/synth-text/accuracy",
                    "drift/teacher_nll", "drift/kl_from_base", "drift/base_teacher_nll"} <= set(r["metrics"])
    # running again does nothing (in a copy: other workers read the session's root meanwhile)
    root = tmp_path / "again"
    shutil.copytree(smoke_root, root)
    again = run_cli("sweep", "run", "experiments/smoke.yaml", "--root", str(root), "-q")
    assert again.returncode == 0 and "0 run(s) finished, 12 already done" in again.stderr


def test_wandb_offline_runs_match_the_ledger(smoke_root):
    led = Ledger(smoke_root)
    checked = 0
    tables: set[str] = set()
    for row in led.conn.execute("SELECT key, artifact_path FROM runs WHERE kind IN ('base', 'sft', 'rl', 'align', 'eval')"):
        files = list((smoke_root / "runs").glob(f"*/{row['key'][:16]}/wandb/offline-run-*/run-*.wandb"))
        assert len(files) == 1, row["key"]
        logged = {}
        for rec in history(files[0]):
            step = int(rec["_step"])
            for k, v in rec.items():
                if not k.startswith("_") and not k.startswith("eval_samples/"):  # sample tables are W&B-only
                    logged[(step, k)] = v
                elif k.startswith("eval_samples/") and k.endswith("/_type"):
                    tables.add(k.split("/")[1])
        ledger_values = {(s, n): v for s, n, v in led.metrics(row["key"]) if v is not None and math.isfinite(v)}
        assert ledger_values, row["key"]
        assert set(ledger_values) == set(logged), row["key"]
        for k, v in ledger_values.items():
            assert logged[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (row["key"], k)
        checked += 1
    led.close()
    assert checked == 10  # 1 base, 1 sft, 1 align, 2 rl, 5 eval
    assert tables == {"synth-perception", "synth-reasoning", "synth-hallusion", "synth-text"}  # sample generations


def test_report_from_the_smoke_ledger(smoke_root, tmp_path):
    res = run_cli("report", "experiments/smoke.yaml", "--root", str(smoke_root), "--out", str(tmp_path / "rep"))
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    for row in ("Instruct", "+SFT", "SFT+GRPO", "PRISM", "PRISM+GRPO", "majority answer"):
        assert row in md
    assert (tmp_path / "rep" / "results.csv").is_file()
    assert any(p.suffix == ".png" and p.stat().st_size > 1000 for p in (tmp_path / "rep").rglob("*.png"))
    # the text-retention group, the drift picture and item intervals on a one-seed grid
    assert "## Text retention" in md and "### Retention: size 4b" in md
    assert "## Drift" in md and (tmp_path / "rep" / "plots" / "drift.png").stat().st_size > 1000
    assert "plots/drift.png" in md and "4b PRISM+GRPO" in md.split("## Drift")[1]
    deltas = md.split("## Deltas")[1].split("##")[0]
    assert "Avg 95% CI (items)" in deltas and "n/a (no paired items)" not in deltas
    assert "none of the paper's benchmarks" in md
    assert "\n\n## Machines\n" in md  # the flags sections follow the files list after a blank line
    lines = md.splitlines()
    assert all(lines[i - 1] == "" for i, line in enumerate(lines) if i and line.startswith("#"))


def test_the_same_runs_under_heavy_cpu_load_give_identical_eval_metrics(smoke_root, tmp_path):
    """Budgets are steps, so machine load cannot change a result: the smoke grid's base run and its eval again
    in another root, under more runnable processes than the machine has cores (a busy-looping process beside the
    stage process, unless the other test workers already keep the load above that), give bit-identical eval metrics
    for every key. (The base stage trains through the same loop as every trainer: the rest of the grid adds no
    new way for load to reach a number.)"""
    import subprocess
    import sys

    # the busy loop makes the load when the machine has none; under a test run that already keeps every core busy
    # (CI's workers and their stage processes), it would add no load, only CPU time
    cores = len(os.sched_getaffinity(0))
    burners = ([] if os.getloadavg()[0] > cores + 1 else
               [subprocess.Popen([sys.executable, "-c", "while True: pass"])])
    try:
        res = run_cli("sweep", "run", "experiments/smoke.yaml", "--root", str(tmp_path / "loaded"), "-q",
                      "--stages", "data,base,eval", "--workers", "2", env=cli_env(**ONE_THREAD), timeout=2400)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert res.returncode == 0, res.stderr[-3000:]

    def eval_metrics(root) -> dict:
        led = Ledger(root)
        try:
            return {(r["run_key"], r["name"]): r["value"] for r in led.conn.execute(
                "SELECT m.run_key, m.name, m.value FROM metrics m JOIN runs r ON r.key = m.run_key "
                "WHERE r.kind = 'eval' AND r.status = 'done'")}
        finally:
            led.close()

    quiet, loaded = eval_metrics(smoke_root), eval_metrics(tmp_path / "loaded")
    assert len({key for key, _ in loaded}) == 1 and len(loaded) > 10  # the Instruct eval
    assert loaded == {k: quiet[k] for k in loaded}
