"""The smoke grid through every real stage on a local Ray cluster gives the local executor's results (slow)."""

from __future__ import annotations

import re

import pytest

from prism_lab.harness.ledger import Ledger
from tests.conftest import ONE_THREAD, cli_env, run_cli
from tests.ray_cluster import DRIVER_ENV, LocalRayCluster

pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # with the session's smoke run as set-up

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


def item_scores(root) -> dict:
    led = Ledger(root)
    try:
        return led.item_scores([r["key"] for r in led.conn.execute("SELECT key FROM runs WHERE kind='eval'")])
    finally:
        led.close()


def test_smoke_grid_on_ray_matches_the_local_executor(tmp_path, smoke_root):
    """The session's smoke run (the local executor, one thread per stage process) against the same grid on Ray."""
    args = ("sweep", "run", "experiments/smoke.yaml", "--wandb", "disabled", "-q")
    cluster = LocalRayCluster(cli_env(**ONE_THREAD))
    try:
        cluster.wait_ready()
        on_ray = run_cli(*args, "--root", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster.address,
                         env=cli_env(**ONE_THREAD, **DRIVER_ENV), timeout=1200)
    finally:
        cluster.stop()
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    want, got = results(smoke_root), results(tmp_path / "ray")
    assert set(got) == set(want) and len(want) == 12
    assert item_scores(tmp_path / "ray") == item_scores(smoke_root) != {}
    for key, (status, attempts, metrics, n_rows) in want.items():
        assert got[key][:2] == (status, attempts) == ("done", 1), key
        assert got[key][3] == n_rows, key  # every logged metric taken in once
        assert set(got[key][2]) == set(metrics), key
        for name, value in metrics.items():
            assert got[key][2][name] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (key, name)
