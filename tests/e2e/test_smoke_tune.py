"""A real Optuna study over the smoke grid's alignment settings (slow): every stage is real."""

from __future__ import annotations

import optuna
import pytest

from prism_lab.harness.ledger import Ledger
from prism_lab.harness.planning import build_plan, load_grid
from tests.conftest import REPO, cli_env, copy_root, run_cli

# the session's smoke run (tests/conftest.py `smoke_root`) and the reruns take minutes on 2 cores: past the
# suite's default 600 s per test, which would also count the shared fixture's set-up
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


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
