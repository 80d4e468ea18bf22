"""The smoke grid on a local Ray cluster gives the local executor's results (slow)."""

from __future__ import annotations

import re

import pytest

from prism_lab.harness.ledger import Ledger
from tests.conftest import ONE_THREAD, cli_env, run_cli
from tests.ray_cluster import DRIVER_ENV, LocalRayCluster

# the session's smoke run (tests/conftest.py `smoke_root`) and the reruns take minutes on 2 cores: past the
# suite's default 600 s per test, which would also count the shared fixture's set-up
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


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
