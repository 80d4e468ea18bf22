"""End to end on the smoke grid (slow): one run of it per test session (tests/conftest.py `smoke_root`, every real
stage, W&B offline), read by every test here: its status, W&B runs and report; the same runs under CPU load;
the same grid on a local Ray cluster; an Optuna study reusing its runs; every trainer sharded over 2 processes.

They share one file so that pytest-xdist (``--dist loadfile``) runs them in one worker, which makes the smoke
run once.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pytest

from prism_lab.harness.ledger import Ledger
from prism_lab.harness.planning import build_plan, load_grid
from tests.conftest import ONE_THREAD, REPO, cli_env, copy_root, run_cli
from tests.ray_cluster import DRIVER_ENV, LocalRayCluster
from tests.wandb_offline import history

# the session's smoke run and the reruns take minutes on 2 cores: past the suite's default 600 s per test,
# which would also count the shared fixture's set-up
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_every_stage_ran_once_and_is_done(smoke_root):
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
    # running again does nothing
    again = run_cli("sweep", "run", "experiments/smoke.yaml", "--root", str(smoke_root), "-q")
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
    in another root, with a busy-looping process beside the stage process (more runnable processes than a
    2-core machine has cores, on top of whatever the other test workers run), give bit-identical eval metrics
    for every key. (The base stage trains through the same loop as every trainer: the rest of the grid adds no
    new way for load to reach a number.)"""
    import subprocess
    import sys

    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
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


# --- the same grid on a local Ray cluster

#: Metrics that measure wall-clock time (durations, throughputs), which differ between any two runs.
WALL_CLOCK = re.compile(r"^time/|_s$|per_s$|/s$")


def results(root) -> dict[str, tuple[str, int, dict[str, float], int]]:
    led = Ledger(root)
    try:
        return {r["key"]: (r["status"], r["attempts"],
                           {k: v for k, v in led.last_metrics(r["key"]).items() if not WALL_CLOCK.search(k)},
                           len(led.metrics(r["key"])))
                for r in led.conn.execute("SELECT key, status, attempts FROM runs")}
    finally:
        led.close()


def item_scores(root, keys: list[str]) -> dict:
    led = Ledger(root)
    try:
        return led.item_scores(keys)
    finally:
        led.close()


def test_smoke_grid_on_ray_matches_the_local_executor(tmp_path, smoke_root):
    """The session's smoke run (the local executor, one thread per stage process) against the same grid on Ray,
    up to the base model and its eval (data, base and eval: every way a stage process runs on Ray; the other
    trainers add none, and tests/harness/test_ray_executor.py runs a 2-process stage on Ray)."""
    pytest.importorskip("ray")
    args = ("sweep", "run", "experiments/smoke.yaml", "--wandb", "disabled", "-q", "--stages", "data,base,eval")
    cluster = LocalRayCluster(cli_env(**ONE_THREAD))
    try:
        cluster.wait_ready()
        on_ray = run_cli(*args, "--root", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster.address,
                         env=cli_env(**ONE_THREAD, **DRIVER_ENV), timeout=1200)
    finally:
        cluster.stop()
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    planned = results(tmp_path / "ray")
    got = {key: value for key, value in planned.items() if value[0] == "done"}
    assert len(planned) == 12 and len(got) == 3  # every run planned; data, base and its eval ran
    local = results(smoke_root)
    want = {key: local[key] for key in got}
    evals = [key for key in got if "eval/avg/accuracy" in got[key][2]]
    assert len(evals) == 1 and item_scores(tmp_path / "ray", evals) == item_scores(smoke_root, evals) != {}
    for key, (status, attempts, metrics, n_rows) in want.items():
        assert got[key][:2] == (status, attempts) == ("done", 1), key
        assert got[key][3] == n_rows, key  # every logged metric taken in once
        assert set(got[key][2]) == set(metrics), key
        for name, value in metrics.items():
            assert got[key][2][name] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (key, name)


# --- an Optuna study over the smoke grid's alignment settings

SPACE = f"""
name: smoke-disc
base: {REPO}/experiments/smoke.yaml
cell: {{size: 4b, algorithm: grpo, alignment: prism, seed: 0}}
objective: {{role: eval/align, metric: eval/avg/accuracy, reduce: last, direction: maximize}}
sampler: random
seed: 0
enqueue_defaults: true
parameters:
  align.caption_weight: {{type: float, low: 0.2, high: 0.8}}
  align.score_clip: {{type: float, low: 2.0, high: 20.0, log: true}}
"""


def test_small_study_on_the_smoke_grid(tmp_path, smoke_root):
    """Two trials in a copy of the session's smoke root: the enqueued defaults are the grid's own alignment
    settings, so the first trial is made of runs the grid already made; the second trains its own."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    root, out = copy_root(smoke_root, tmp_path / "root"), tmp_path / "out"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    res = run_cli("tune", str(space), "--root", str(root), "--trials", "2", "--storage", storage, "--out", str(out),
                  env=cli_env(), timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    study = optuna.load_study(study_name="smoke-disc", storage=storage)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2
    assert complete[0].params["align.caption_weight"] == 0.5  # the enqueued defaults come first
    led = Ledger(root)
    kinds = {}
    for row in led.conn.execute("SELECT kind, attempts, status FROM runs"):
        kinds.setdefault(row["kind"], []).append((row["attempts"], row["status"]))
    led.close()
    # data, base, SFT and their evals are shared by both trials: one run each, executed once
    for kind in ("data", "base", "sft"):
        assert kinds[kind] == [(1, "done")], kinds[kind]
    assert len(kinds["align"]) == 2  # one per trial (different caption weights)
    best = load_grid(out / "best.yaml")
    plan = build_plan(best)
    assert plan.count("align") >= 1
    assert any(r.config.get("caption_weight") == study.best_params["align.caption_weight"]
               for r in plan.runs.values() if r.kind == "align")


# --- every trainer sharded over 2 gloo processes

def test_sweep_runs_sft_align_and_rl_stages_with_two_processes(tmp_path, smoke_root):
    """The smoke grid with every trainer sharded over 2 processes. It starts from a copy of the session's smoke
    root: the data and base runs do not shard, so their keys are the same and they are reused, not rerun."""
    grid = tmp_path / "smoke2.yaml"
    grid.write_text(f"extends: {REPO / 'experiments' / 'smoke.yaml'}\nname: smoke2\n"
                    "stages:\n  sft:\n    resources: {processes: 2}\n  rl:\n    resources: {processes: 2}\n"
                    "  disc_warmup:\n    resources: {processes: 2}\n  align:\n    resources: {processes: 2}\n")
    root = copy_root(smoke_root, tmp_path / "root")
    before = {d for kind in ("data", "base") for d in (root / "runs" / kind).iterdir()}
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", "--stages", "base,sft,disc_warmup,align,rl",
                  env=cli_env(), timeout=1200)
    assert res.returncode == 0, res.stderr
    status = run_cli("sweep", "status", str(grid), "--root", str(root), "--format", "json")
    runs: dict[str, list[Path]] = {}
    for r in json.loads(status.stdout):
        if r["status"] == "done":
            runs.setdefault(r["kind"], []).append(root / r["artifact_path"])
    assert {d for kind in ("data", "base") for d in (root / "runs" / kind).iterdir()} == before  # reused, not rerun
    (disc_dir,) = runs["disc_warmup"]
    assert json.loads((disc_dir / "run.json").read_text())["summary"]["processes"] == 2
    assert (disc_dir / "discriminator" / "score_head.safetensors").is_file()
    from prism_lab.models import load_policy
    from prism_lab.models.discriminator import load_discriminator

    (sft_dir,) = runs["sft"]
    _, processor = load_policy(sft_dir / "model")
    disc = load_discriminator(disc_dir / "discriminator", policy_processor=processor)  # the gathered files load
    assert disc.is_moe and sum(p.numel() for p in disc.parameters()) > 0
    (align_dir,) = runs["align"]
    aligned = load_discriminator(align_dir / "discriminator", policy_processor=processor)  # rank 0's gathered files
    assert aligned.is_moe
    for kind in ("sft", "align", "rl"):
        for run_dir in runs[kind]:
            record = json.loads((run_dir / "run.json").read_text())
            assert record["summary"]["processes"] == 2
            assert (run_dir / "model" / "model.safetensors").is_file() and not (run_dir / "resume").exists()
    assert len(runs["rl"]) == 2  # with and without alignment
