"""Chance and majority-answer baselines and the noise band (prism_lab.eval.baselines) against hand-computed
values."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from prism_lab.data.bench_tsv import BenchItem
from prism_lab.eval.baselines import chance, majority, noise_band, normalise_answer


def item(answer: str, options: dict | None = None, category: str | None = None, index: int = 0) -> BenchItem:
    return BenchItem(index=index, question="q?", answer=answer, options=dict(options or {}), category=category)


ABCD = {"A": "1", "B": "2", "C": "3", "D": "4"}


def test_hallusion_like_yes_no():
    # 3 Yes, 5 No in one category: always "No" scores 5/8; a coin 1/2
    items = [item("Yes", category="VD")] * 3 + [item("No", category="VD")] * 5
    assert chance(items, "yesno") == pytest.approx(0.5)
    assert majority(items) == pytest.approx(5 / 8)


def test_yes_no_case_and_whitespace_are_one_answer():
    items = [item(" yes"), item("YES"), item("No"), item("no "), item("no")]
    assert normalise_answer(" YES ") == "yes" and normalise_answer(" 7 ") == "7" and normalise_answer("b") == "b"
    assert majority(items) == pytest.approx(3 / 5)  # no, no, no vs yes, yes
    assert chance(items, "yesno") == pytest.approx(0.5)


def test_perception_like_mix_of_open_counts_and_mcq():
    items = [
        # count (open): answers 3, 3, 5, 7 -> 3 distinct: chance 1/3 each; majority "3": 2 of 4
        item("3", category="count"), item("3", category="count"), item("5", category="count"),
        item("7", category="count"),
        # mcq_count: 4 options; answers A, C, C -> majority "C": 2 of 3
        item("A", ABCD, "mcq_count"), item("C", ABCD, "mcq_count"), item("C", ABCD, "mcq_count"),
        # mcq_shape: 2 options; answer B -> majority 1 of 1
        item("B", {"A": "circle", "B": "square"}, "mcq_shape"),
    ]
    assert chance(items, "open") == pytest.approx((4 * (1 / 3) + 3 * 0.25 + 0.5) / 8)
    assert majority(items) == pytest.approx((2 + 2 + 1) / 8)


def test_reasoning_like_open_integers_without_category():
    # no category: one group; answers 4, 4, 4, 9, 12 -> 3 distinct; majority "4": 3 of 5
    items = [item(a, index=i) for i, a in enumerate(["4", "4", " 4", "9", "12"])]
    assert chance(items, "open") == pytest.approx(1 / 3)
    assert majority(items) == pytest.approx(3 / 5)


def test_open_rows_of_a_yesno_benchmark_and_options_in_yesno():
    # a yesno benchmark's MCQ row is a letter guess (1/len(options)), its plain rows 1/2
    items = [item("Yes"), item("No"), item("A", {"A": "x", "B": "y", "C": "z"})]
    assert chance(items, "yesno") == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    # in an open benchmark the same Yes/No answers are an open category of 2 distinct answers
    assert chance(items[:2], "open") == pytest.approx(0.5)


def test_ties_and_empty():
    items = [item("A", ABCD), item("B", ABCD)]
    assert majority(items) == pytest.approx(0.5)  # either answer scores 1 of 2
    assert chance([], "mcq") is None and majority([]) is None


def test_noise_band_two_standard_errors():
    # p = 0.5, n = 100: se = sqrt(0.25 / 100) = 0.05 -> band 0.1
    assert noise_band(0.5, 100) == pytest.approx(0.1)
    # p = 0.625, n = 8: 2 * sqrt(0.625 * 0.375 / 8) = 2 * sqrt(0.029296875)
    assert noise_band(0.625, 8) == pytest.approx(2 * math.sqrt(0.029296875))
    assert noise_band(1.0, 10) == 0.0 and noise_band(0.0, 10) == 0.0
    assert math.isnan(noise_band(0.5, 0))


def test_module_imports_no_torch():
    code = "import sys, prism_lab.eval.baselines; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
