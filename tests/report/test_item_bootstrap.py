"""Paired item bootstrap: hand-computed differences and intervals that must exclude or include zero."""

import numpy as np
import pytest

from prism_lab.report.item_bootstrap import item_bootstrap_interval, item_differences


def test_item_differences_average_over_shared_seeds_and_items():
    t = {0: {"b": {"1": 1, "2": 1, "3": 0}}, 1: {"b": {"1": 0, "2": 1, "3": 1}}, 2: {"b": {"1": 1}}}
    base = {0: {"b": {"1": 0, "2": 1, "3": 0}}, 1: {"b": {"1": 0, "2": 0, "3": 1, "4": 1}}}
    d = item_differences(t, base, "b")
    # seeds 0 and 1 are shared; items 1,2,3: seed0 diffs (1,0,0), seed1 diffs (0,1,0) -> means (.5,.5,0)
    assert d.tolist() == [0.5, 0.5, 0.0]
    assert item_differences(t, base, "other").size == 0


def test_interval_point_estimate_and_significance():
    always_better = np.ones(200)
    iv = item_bootstrap_interval([always_better])
    assert iv.mean == pytest.approx(100.0) and iv.low == pytest.approx(100.0) and iv.significant
    mixed = np.array([1.0, -1.0] * 100)  # mean 0: the interval must straddle 0
    iv = item_bootstrap_interval([mixed])
    assert iv.mean == pytest.approx(0.0) and iv.low < 0 < iv.high and iv.significant is False
    assert iv.n == 200 and iv.method == "item_bootstrap"


def test_avg_resamples_each_benchmark_and_averages():
    a, b = np.full(50, 0.2), np.full(10, -0.1)  # constant diffs: no spread at all
    iv = item_bootstrap_interval([a, b])
    assert iv.mean == pytest.approx(100 * (0.2 - 0.1) / 2)
    assert iv.low == pytest.approx(iv.mean) and iv.high == pytest.approx(iv.mean)


def test_interval_width_shrinks_with_items():
    rng = np.random.default_rng(1)
    small = rng.choice([-1.0, 0.0, 1.0], size=30)
    large = np.tile(small, 20)
    w_small = item_bootstrap_interval([small])
    w_large = item_bootstrap_interval([large])
    assert (w_large.high - w_large.low) < (w_small.high - w_small.low) / 2


def test_untestable_without_items():
    iv = item_bootstrap_interval([np.zeros(0)])
    assert iv.significant is None and iv.mean is None and "no paired items" in iv.note
