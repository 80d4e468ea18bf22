"""Tests for the RLVR rule reward (docs/prism_method.md §7.1): format gate + answer judge cascade."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prism_lab import rewards as R
from prism_lab.prompts import format_response
from prism_lab.rewards import answer_judge
from prism_lab.rewards import math_verify_fallback as mv_fallback


def resp(answer: str) -> str:
    """A well-formed response with the given answer."""
    return format_response("- a red square", "count, then add", answer)


# ------------------------------------------------------------------------------------------
# compute_score: format gate, empty/overlong answers, weights
# ------------------------------------------------------------------------------------------

FORMAT_FAILURES = [
    pytest.param("<think>x</think>\n<answer>42</answer>", id="missing-caption"),
    pytest.param("<caption>- a</caption>\n<answer>42</answer>", id="missing-think"),
    pytest.param("<caption>- a</caption>\n<think>x</think>", id="missing-answer"),
    pytest.param("<think>x</think><caption>- a</caption><answer>42</answer>", id="wrong-order"),
    pytest.param(
        "<caption>- a</caption><answer>42</answer><think>x</think>", id="answer-before-think"
    ),
    pytest.param("Sure! " + resp("42"), id="text-before"),
    pytest.param(resp("42") + "\nHope this helps.", id="text-after"),
    pytest.param(
        "<caption>- a</caption> note <think>x</think><answer>42</answer>", id="text-between"
    ),
    pytest.param("42", id="bare-answer"),
    pytest.param("", id="empty-response"),
    pytest.param("<caption>- a</caption><think>x</think><answer>42", id="unclosed-answer"),
]


@pytest.mark.parametrize("response", FORMAT_FAILURES)
def test_format_failure_scores_zero(response):
    # The correct answer "42" is inside most of these: the gate must still give (0, 0, 0).
    assert R.compute_score(response, "42") == R.RewardResult(0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "response, gt, expected",
    [
        pytest.param(resp("42"), "42", (1.0, 1.0, 1.0), id="correct"),
        pytest.param(resp("41"), "42", (0.2, 0.0, 1.0), id="wrong"),
        pytest.param(
            "\n  <caption>- a</caption>\n\n<think>x</think>   <answer> 42 </answer>\n ",
            "42",
            (1.0, 1.0, 1.0),
            id="whitespace-around-blocks",
        ),
        pytest.param(resp(""), "42", (0.2, 0.0, 1.0), id="empty-answer"),
        pytest.param(resp("   \n  "), "42", (0.2, 0.0, 1.0), id="blank-answer"),
        pytest.param(resp("7" * 1024), "7" * 1024, (0.2, 0.0, 1.0), id="answer-1024-chars"),
        pytest.param(resp("7" * 1023), "7" * 1023, (1.0, 1.0, 1.0), id="answer-1023-chars"),
    ],
)
def test_compute_score_gate(response, gt, expected):
    r = R.compute_score(response, gt)
    assert (r.score, r.acc, r.format) == pytest.approx(expected)


def test_equivalent_answers_count():
    assert R.compute_score(resp("0.5"), "1/3").acc == 0.0
    assert R.compute_score(resp("0.5"), "1/3", ["2/4", "0.50"]).acc == 1.0
    assert R.compute_score(resp("0.6"), "1/3", ["2/4", "0.50"]).acc == 0.0


def test_custom_weights_and_limit():
    r = R.compute_score(resp("42"), "42", acc_weight=0.5, format_weight=0.5)
    assert (r.score, r.acc, r.format) == (1.0, 1.0, 1.0)
    r = R.compute_score(resp("41"), "42", acc_weight=0.5, format_weight=0.5)
    assert r.score == pytest.approx(0.5)
    r = R.compute_score(resp("42"), "42", max_answer_chars=2)
    assert (r.score, r.acc, r.format) == (pytest.approx(0.2), 0.0, 1.0)


def test_result_is_frozen_and_dict_has_original_keys():
    r = R.compute_score(resp("42"), "42")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.score = 0.0  # type: ignore[misc]
    assert r.to_dict() == {"score": 1.0, "acc_reward": 1.0, "format_reward": 1.0}


# ------------------------------------------------------------------------------------------
# judge: the cascade, end to end
# ------------------------------------------------------------------------------------------

JUDGE_CASES = [
    # --- multiple choice, GT a bare letter
    ("B", "B", True),
    ("(B)", "B", True),
    ("[B]", "B", True),
    ("b", "B", True),
    ("B.", "B", True),
    ("The answer is B", "B", True),
    ("the answer is (B).", "B", True),
    ("Answer: D", "D", True),
    ("B. 42", "B", True),
    ("B) 42", "B", True),
    ("Option A is wrong and the answer is B", "B", True),  # priority 10 beats "A"-free patterns
    ("(A) is tempting but (C)", "C", False),  # priority 8, earliest occurrence: A
    ("C", "B", False),
    ("The answer is C", "B", False),
    ("(A)", "B", False),
    # --- multiple choice, other GT forms
    ("C", "(C) 42", True),
    ("(C)", "(C) 42", True),
    ("The answer is C", "(C) 42", True),
    ("B", "(C) 42", False),
    ("B", "B. 3", True),
    ("A", "B. 3", False),
    # --- exact and normalisation
    ("42", "42", True),
    ("3.", "3", True),
    ("1,000", "1000", True),
    ("1,000,000", "1000000", True),
    ("1，000", "1000", True),
    (r"$42$", "42", True),
    (r"$$42$$", "42", True),
    (r"\(42\)", "42", True),
    (r"\[42\]", "42", True),
    (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
    (r"\tfrac{ 1 }{ 2 }", r"\frac{1}{2}", True),
    (r"\text{5 apples}", "5 apples", True),
    (r"\mathrm{red}", "red", True),
    (r"\left(1, 2\right)", "(1,2)", True),
    # --- numbers, units, tolerance
    ("3 cm", "3", True),
    ("3", "3 cm", True),
    ("3cm", "3 cm", True),
    ("3 \\text{cm}", "3", True),
    ("4 cm", "3 cm", False),
    ("50%", "50", True),
    ("50\\%", "50%", True),
    ("30^\\circ", "30°", True),
    ("30^{\\circ}", "30", True),
    ("30°C", "30℃", True),
    ("12 kg", "12", True),
    ("5 people", "5", True),
    ("5个", "5", True),
    ("5 平方米", "5", True),
    ("2.5 hours", "2.5", True),
    ("5 square meters", "5 m^2", True),
    ("5 cm^{2}", "5cm²", True),
    ("0", "0", True),
    ("0.0", "0", True),
    ("-0", "0", True),
    ("0.001", "0", False),  # GT 0 needs an exact 0
    ("1e-9", "0", False),
    ("0.0000001", "0", False),
    ("0.0000012", "0.000001", False),  # math_verify alone says equal (6-decimal rounding); numeric rule is final
    ("1.0000001", "1", True),  # relative error 1e-7
    ("1.00001", "1", False),  # relative error 1e-5
    ("1000000.5", "1000000", True),
    ("-3", "3", False),
    ("1.5", "15", False),
    ("x = -3", "x = 3", False),
    # --- case / punctuation-insensitive text
    ("Yes", "yes.", True),
    ("YES!", "yes", True),
    ("**42**", "42", True),
    ("**Paris**", "paris", True),
    ("The Eiffel Tower", "the eiffel tower.", True),
    ("是。", "是", True),
    ("yes", "no", False),
    ("red", "erd", False),  # not an anagram match through math_verify
    ("Paris", "London", False),
    # --- multi-value
    ("2, 3", "2,3", True),
    ("3, 2", "2,3", False),  # order matters
    ("2, 3, 4", "2,3", False),  # count mismatch
    ("5", "5, 6", False),
    ("(1) 5 (2) 6", "5, 6", True),
    ("(1) 5 (2) 6", "(1) 5 (2) 6", True),
    ("(1) 5 (2) 7", "(1) 5 (2) 6", False),
    ("(1) 5; (2) 6", "5；6", True),
    ("5; 6", "5;6", True),
    ("5; 7", "5;6", False),
    ("1 cm, 2 cm", "1, 2", True),
    ("red, green", "Red, Green.", True),
    ("(1) A (2) C", "(1) A (2) B", False),
    # --- coordinates
    ("(1, 2)", "(1.0, 2.0)", True),
    ("(1,2)", "(1, 2)", True),
    ("(1, 2)", "(2, 1)", False),
    ("(1, 2.000001)", "(1, 2)", True),
    ("(1, 2.01)", "(1, 2)", False),
    ("(1, 2.0000011)", "(1, 2)", False),
    ("(1, 2), (3, 4)", "(1, 2), (3, 4)", True),
    ("(1, 2)", "[1, 2]", False),  # punctuation removal must not equate an open and a closed interval
    # --- math_verify fallback
    (r"\frac{1}{2}", "0.5", True),
    (r"$\frac{1}{2}$", "0.5", True),
    ("1/2", "0.5", True),
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    (r"2\sqrt{5}", r"2\sqrt{3}", False),
    ("x+1", "1+x", True),
    ("x+2", "1+x", False),
    (r"\boxed{5}", "5", True),
    (r"\{1,2\}", r"\{2,1\}", True),
    (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}", True),
    (r"\pi", "3.14", False),
    # --- empty
    ("", "0", False),
    (".", ".", False),
]


@pytest.mark.parametrize(
    "pred, gt, expected", JUDGE_CASES, ids=[f"{p!r}~{g!r}" for p, g, _ in JUDGE_CASES]
)
def test_judge(pred, gt, expected):
    assert R.judge(pred, gt) is expected


def test_numeric_rule_ignores_units_as_the_spec_says():
    # Spec 7.1: numeric equality strips units on both sides without comparing them. Pinned here so
    # that a change to that (documented, lenient) behaviour is a deliberate one.
    assert R.judge("3 m", "3 cm") is True
    # The unit-stripped *text* rule, by contrast, needs identical units.
    assert R.judge(r"2\sqrt{3} cm", r"2\sqrt{3}cm") is True
    assert R.judge(r"2\sqrt{3} m", r"2\sqrt{3} cm") is False


# ------------------------------------------------------------------------------------------
# The small functions
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  $x$ ", "x"),
        ("$$x + 1$$", "x + 1"),
        ("$1$ and $2$", "$1$ and $2$"),  # not one enclosing pair
        (r"\dfrac{a}{b}", r"\frac{a}{b}"),
        (r"\text{ 3 } \mathrm{cm}", "3 cm"),
        (r"\text{a \textbf{b}}", r"a \textbf{b}"),
        (r"\left[ 1 \right]", "[ 1 ]"),
        (r"\leftarrow", r"\leftarrow"),
        (r"\frac { 1 } { 2 }", r"\frac{1}{2}"),
        ("a \n\t b", "a b"),
        ("12,345.", "12345"),
        ("2,3", "2,3"),
        ("1,2345", "1,2345"),
        ("(1，2)", "(1,2)"),
        ("x..", "x."),
    ],
)
def test_normalise(raw, expected):
    assert R.normalise(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("(1) 5 (2) 6", ["5", "6"]),
        ("x (1) 5 (2) 6", ["5", "6"]),  # first marker starts at index 2
        ("xyz (1) 5 (2) 6", ["xyz (1) 5 (2) 6"]),  # too late: not numbered, no separators
        ("(1) 5", ["(1) 5"]),  # a single marker is not a list
        ("a; b；c", ["a", "b", "c"]),
        ("a;", ["a"]),
        (r"1\;cm", [r"1\;cm"]),  # LaTeX spacing is not a separator
        ("1, 2", ["1", "2"]),
        ("1,000", ["1,000"]),  # thousands separator
        ("f(1, 2), g(3)", ["f(1, 2)", "g(3)"]),
        ("[0, 1), (2, 3]", ["[0, 1)", "(2, 3]"]),
        (r"1\,000", [r"1\,000"]),
        ("$1, 2$", ["1", "2"]),
        ("42", ["42"]),
    ],
)
def test_split_multi(raw, expected):
    assert R.split_multi(raw) == expected


@pytest.mark.parametrize(
    "pred, expected",
    [
        ("B", "B"),
        ("(c)", "C"),
        ("The answer is E", "E"),
        ("choice is (F)", "F"),
        ("I pick (A), final answer is D", "D"),  # 10 > 8
        ("(A) or (B)", "A"),  # earliest of equal priority
        ("B. or (C)", "C"),  # 8 > 6
        ("see A. and B.", "A"),
        ("the answer is a triangle", None),  # lower-case word, not a letter
        ("ABC.", None),
        ("42", None),
        ("I", None),  # not in A-H
    ],
)
def test_extract_mcq_letter(pred, expected):
    assert R.extract_mcq_letter(pred) == expected


@pytest.mark.parametrize(
    "gt, expected",
    [
        ("A", "A"),
        ("H", "H"),
        ("I", None),
        ("a", None),
        ("(C) 42", "C"),
        ("(C)", "C"),
        ("B. 3", "B"),
        ("B. -3", "B"),
        ("B. (1, 2)", "B"),
        ("B. Smith", None),
        ("Bob", None),
    ],
)
def test_gt_mcq_letter(gt, expected):
    assert R.gt_mcq_letter(gt) == expected
    assert R.is_mcq_ground_truth(gt) is (expected is not None)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("3 cm", ("3", "cm")),
        ("3cm", ("3", "cm")),
        ("12kg", ("12", "kg")),
        ("30^{\\circ}", ("30", "°")),
        ("30 degrees", ("30", "°")),
        ("20℃", ("20", "°c")),
        ("20 °C", ("20", "°c")),
        ("50\\%", ("50", "%")),
        ("5 square meters", ("5", "meter^2")),
        ("5 cm^{2}", ("5", "cm^2")),
        ("5cm³", ("5", "cm^3")),
        ("2 hours", ("2", "hour")),
        ("3 mL", ("3", "ml")),
        ("5个", ("5", "个")),
        ("Adam", ("Adam", None)),  # a trailing "m" glued to letters is not a unit
        ("m", ("m", None)),
        ("42", ("42", None)),
    ],
)
def test_strip_units(raw, expected):
    assert R.strip_units(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [("42", 42.0), ("-3.5", -3.5), ("+.5", 0.5), ("1e3", 1000.0), ("−2", -2.0), ("3.", 3.0),
     ("1/2", None), ("x", None), ("", None), ("1 2", None)],
)
def test_parse_number(raw, expected):
    assert R.parse_number(raw) == expected


def test_numeric_equal():
    assert R.numeric_equal(0.0, 0.0)
    assert not R.numeric_equal(1e-12, 0.0)
    assert R.numeric_equal(100.00001, 100.0)  # 1e-7 relative
    assert not R.numeric_equal(100.001, 100.0)
    assert not R.numeric_equal(-5.0, 5.0)


def test_coordinate_pairs():
    assert R.coordinate_pairs("A(1, -2) and B(.5, 3.0)") == [(1.0, -2.0), (0.5, 3.0)]
    assert R.coordinate_pairs("(1, 2, 3)") == []


def test_loose_text():
    assert R.loose_text("  **Hello**,   World! ") == "hello world"
    assert R.loose_text("答案：是。") == "答案是"


# ------------------------------------------------------------------------------------------
# Robustness: exceptions, timeouts, threads, import cost
# ------------------------------------------------------------------------------------------


def test_exceptions_count_as_zero(monkeypatch):
    def boom(_s):
        raise RuntimeError("boom")

    monkeypatch.setattr(answer_judge, "split_multi", boom)
    assert R.judge("42", "42") is False
    assert R.compute_score(resp("42"), "42") == R.RewardResult(pytest.approx(0.2), 0.0, 1.0)


def test_math_verify_errors_count_as_zero(monkeypatch):
    def bad_parse(*_a, **_k):
        raise RuntimeError("parser crashed")

    monkeypatch.setattr(mv_fallback, "_import_math_verify", lambda: (bad_parse, lambda *a, **k: True))
    assert R.math_verify_equal("x+1", "1+x") is False


def test_math_verify_budget_exhausted_counts_as_zero(monkeypatch):
    assert R.math_verify_equal("x+1", "1+x") is True
    monkeypatch.setattr(mv_fallback, "MV_TOTAL_BUDGET_S", -1.0)
    assert R.math_verify_equal("x+1", "1+x") is False


def test_math_verify_works_off_the_main_thread():
    cases = [
        (r"\frac{1}{2}", "0.5", True),
        ("x+1", "1+x", True),
        (r"2\sqrt{5}", r"2\sqrt{3}", False),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(lambda c: R.judge(c[0], c[1]), cases))
    assert got == [c[2] for c in cases]


def test_math_verify_off_main_thread_times_out(monkeypatch):
    def slow(*_a, **_k):
        time.sleep(5)
        return True

    monkeypatch.setattr(mv_fallback, "_mv_compare", slow)
    monkeypatch.setattr(mv_fallback, "MV_TOTAL_BUDGET_S", 0.1)
    out: list[bool] = []
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: out.append(R.math_verify_equal("x+1", "1+x")))
    worker.start()
    worker.join(10)
    assert out == [False]
    assert time.monotonic() - t0 < 3.0


def test_import_is_light():
    code = (
        "import sys, prism_lab.rewards; "
        "assert 'sympy' not in sys.modules and 'math_verify' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
