"""Pure statistics for reports: mean/std over seeds, Student-t quantiles, paired intervals.

Only the standard library and numpy: the Student-t distribution is computed here from the regularized
incomplete beta function (continued fraction, modified Lentz), and its quantile by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Significance methods a grid's ``report.significance`` may name.
METHODS = ("paired_t", "bootstrap")

#: Resamples and seed of the paired bootstrap (fixed, so a report is regenerated identically).
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


# ---- descriptive ------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof=1, n). std is None with fewer than two values; mean None when empty."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return None, None, 0
    mean = sum(vals) / n
    if n < 2:
        return mean, None, n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var), n


# ---- Student t --------------------------------------------------------------------------------------
def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz evaluation)."""
    tiny = 1e-300
    eps = 1e-15
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        # even step
        num = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if t == 0:
        return 0.5
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on ``t_cdf``)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---- paired intervals -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A paired comparison over seeds: mean difference, spread and a two-sided interval."""

    mean: float | None
    std: float | None
    n: int
    low: float | None
    high: float | None
    significant: bool | None  # None: not testable (fewer than two pairs)
    method: str
    note: str = ""

    @property
    def testable(self) -> bool:
        return self.significant is not None


def _excludes_zero(low: float, high: float) -> bool:
    return low > 0.0 or high < 0.0


def _untestable(diffs: list[float], method: str) -> Interval:
    mean, std, n = mean_std(diffs)
    note = "n/a (no pairs)" if n == 0 else "n/a (1 seed)"
    return Interval(mean=mean, std=std, n=n, low=None, high=None, significant=None, method=method, note=note)


def paired_t_interval(diffs: Sequence[float], level: float = 0.95) -> Interval:
    """Two-sided t-interval of the mean per-seed difference; significant when it excludes 0."""
    d = [float(x) for x in diffs]
    if len(d) < 2:
        return _untestable(d, "paired_t")
    mean, std, n = mean_std(d)
    assert mean is not None and std is not None
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    return Interval(mean=mean, std=std, n=n, low=low, high=high,
                    significant=_excludes_zero(low, high), method="paired_t")


def paired_bootstrap_interval(
    diffs: Sequence[float], level: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> Interval:
    """Percentile interval of the mean difference over ``n_resamples`` resamples of the seed pairs."""
    d = np.asarray([float(x) for x in diffs], dtype=float)
    if d.size < 2:
        return _untestable(d.tolist(), "bootstrap")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = (float(v) for v in np.quantile(means, [alpha, 1.0 - alpha]))
    mean, std, n = mean_std(d.tolist())
    return Interval(mean=mean, std=std, n=n, low=low, high=high,
                    significant=_excludes_zero(low, high), method="bootstrap")


def paired_interval(diffs: Sequence[float], method: str = "paired_t", level: float = 0.95) -> Interval:
    """Dispatch on a grid's ``report.significance``."""
    if method == "paired_t":
        return paired_t_interval(diffs, level)
    if method == "bootstrap":
        return paired_bootstrap_interval(diffs, level)
    raise ValueError(f"unknown significance method {method!r}; expected one of {', '.join(METHODS)}")


def method_description(method: str, level: float = 0.95) -> str:
    """One sentence for the report saying how significance was decided."""
    pct = f"{level * 100:g}%"
    if method == "paired_t":
        return (f"paired t-interval: per-seed differences (treatment − baseline, same seed), two-sided {pct} "
                f"Student-t interval of their mean (df = seeds − 1); a delta is significant (*) when the "
                f"interval excludes 0. Needs at least 2 seeds.")
    if method == "bootstrap":
        return (f"paired bootstrap: {BOOTSTRAP_RESAMPLES:,} resamples (with replacement) of the seed pairs, "
                f"numpy seed {BOOTSTRAP_SEED}; {pct} percentile interval of the mean difference; a delta is "
                f"significant (*) when the interval excludes 0. Needs at least 2 seeds (with few seeds the "
                f"interval is coarse).")
    raise ValueError(f"unknown significance method {method!r}")
