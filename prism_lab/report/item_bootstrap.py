"""Paired bootstrap over benchmark items: an interval for a delta even when a grid has one seed.

The treatment and the baseline answer the same benchmark items, so a delta is a mean of per-item
differences. Resampling the items (with replacement, the same draw for both sides) gives the
uncertainty that comes from the finite benchmark (Efron & Tibshirani 1993, "An Introduction to the
Bootstrap", ch. 13 percentile intervals; the paired item bootstrap of Koehn 2004, "Statistical
Significance Tests for Machine Translation Evaluation"). With several seeds, each item's difference
is first averaged over the seeds both sides have, so the interval covers item sampling only; the
seed interval (``stats.paired_interval``) covers training randomness. Reports show both, labelled.

For the ``Avg`` column each benchmark's items are resampled independently and the benchmark deltas
averaged, exactly as Avg averages the benchmark accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prism_lab.report.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Interval

METHOD = "item_bootstrap"

#: item scores of one eval run: benchmark -> item id -> score (1/0 for correct, or a fraction)
ItemScores = Mapping[str, Mapping[str, float]]


def item_differences(treatment: Mapping[Any, ItemScores], baseline: Mapping[Any, ItemScores],
                     benchmark: str) -> np.ndarray:
    """Per-item treatment − baseline differences of one benchmark, averaged over the shared seeds.

    ``treatment`` / ``baseline``: seed -> item scores. Only seeds both sides have, and items every one of
    those runs scored, are used (sorted by item id, so the result does not depend on dict order).
    """
    seeds = [s for s in treatment if s in baseline and benchmark in treatment[s] and benchmark in baseline[s]]
    if not seeds:
        return np.zeros(0)
    common: set[str] | None = None
    for s in seeds:
        ids = set(treatment[s][benchmark]) & set(baseline[s][benchmark])
        common = ids if common is None else common & ids
    items = sorted(common or ())
    if not items:
        return np.zeros(0)
    diffs = np.array([[float(treatment[s][benchmark][i]) - float(baseline[s][benchmark][i]) for i in items]
                      for s in seeds])
    return diffs.mean(axis=0)


def bootstrap_item_means(per_bench: Sequence[np.ndarray], *, n_resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``n_resamples`` bootstrap replicates of the mean over benchmarks of the mean item difference."""
    rng = np.random.default_rng(seed)
    reps = np.zeros(n_resamples)
    for d in per_bench:
        idx = rng.integers(0, d.size, size=(n_resamples, d.size))
        reps += d[idx].mean(axis=1)
    return reps / len(per_bench)


def item_bootstrap_interval(per_bench: Sequence[np.ndarray], *, level: float = 0.95, scale: float = 100.0,
                            n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Interval:
    """Percentile interval of the (mean over benchmarks of the) mean item difference, times ``scale``
    (100: points of accuracy). ``n`` is the number of items; untestable when a benchmark has none."""
    arrays = [np.asarray(d, dtype=float) for d in per_bench]
    n_items = int(sum(d.size for d in arrays))
    if not arrays or any(d.size == 0 for d in arrays):
        return Interval(mean=None, std=None, n=n_items, low=None, high=None, significant=None, method=METHOD,
                        note="n/a (no paired items)")
    point = float(np.mean([d.mean() for d in arrays])) * scale
    reps = bootstrap_item_means(arrays, n_resamples=n_resamples, seed=seed) * scale
    alpha = (1.0 - level) / 2.0
    low, high = (float(v) for v in np.quantile(reps, [alpha, 1.0 - alpha]))
    return Interval(mean=point, std=float(reps.std(ddof=1)), n=n_items, low=low, high=high,
                    significant=low > 0.0 or high < 0.0, method=METHOD)


def describe(level: float = 0.95) -> str:
    """One sentence for the report saying what the item interval is."""
    return (f"item bootstrap: {BOOTSTRAP_RESAMPLES:,} resamples (with replacement) of the benchmark items, the "
            f"same draw for treatment and baseline, numpy seed {BOOTSTRAP_SEED}; per-item differences are "
            f"averaged over the shared seeds first; {level * 100:g}% percentile interval; Avg resamples each "
            f"benchmark's items independently. It measures how much the delta could move with another draw of "
            f"benchmark items (not training randomness), so a one-seed grid still has an interval.")
