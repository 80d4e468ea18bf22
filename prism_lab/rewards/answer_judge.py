"""The answer judge: multi-value split, normalisation, then one rule cascade per value (coordinates ->
multiple-choice letter -> exact / numeric / loose text / unit-stripped text), and ``math_verify`` when
no rule decided. Deliberate deviations from a literal reading of the authors' scorer, each to avoid
rewarding a wrong answer, are marked "[guard]"."""

from __future__ import annotations

from prism_lab.rewards.loose_text import loose_equal
from prism_lab.rewards.math_verify_fallback import math_verify_equal
from prism_lab.rewards.mcq import extract_mcq_letter, gt_mcq_letter
from prism_lab.rewards.normalise import normalise, split_multi
from prism_lab.rewards.numbers import (
    coordinate_pairs,
    coordinates_equal,
    numeric_equal,
    parse_number,
)
from prism_lab.rewards.units import strip_units


def rule_judge(pred: str, gt: str) -> bool | None:
    """The rule part of the single judge on two normalised values: True, False, or None.

    (a) both sides contain ``(x, y)`` pairs -> the coordinate comparison decides;
    (b) the GT is an MCQ letter form and a letter can be read from the prediction -> the letter
    comparison decides (with no letter the cascade goes on);
    then accept (True) on exact equality, numeric equality with units stripped, loose text
    equality, or unit-stripped text equality (units both absent or identical).
    [guard] When both sides are plain numbers (units stripped) the 1e-6 relative rule is final
    (False), so math_verify, which rounds to 6 decimals, cannot overrule "GT 0 needs exact 0".
    None means no rule decided: the caller may fall back to math_verify.
    """
    if not pred or not gt:
        return False
    p_pairs, g_pairs = coordinate_pairs(pred), coordinate_pairs(gt)
    if p_pairs and g_pairs:
        return coordinates_equal(p_pairs, g_pairs)
    gt_letter = gt_mcq_letter(gt)
    if gt_letter is not None:
        pred_letter = extract_mcq_letter(pred)
        if pred_letter is not None:
            return pred_letter == gt_letter
    if pred == gt:
        return True
    (p_val, p_unit), (g_val, g_unit) = strip_units(pred), strip_units(gt)
    p_num, g_num = parse_number(p_val), parse_number(g_val)
    both_numbers = p_num is not None and g_num is not None
    if both_numbers and numeric_equal(p_num, g_num):
        return True
    if loose_equal(pred, gt):
        return True
    if p_unit == g_unit and (p_val == g_val or loose_equal(p_val, g_val)):
        return True
    return False if both_numbers else None


def single_judge(pred: str, gt: str) -> bool:
    """One predicted value against one GT value (both normalised), rules only (no math_verify).

    This is what each pair of a multi-valued answer must pass.
    """
    return rule_judge(pred, gt) is True


def judge(pred: str, gt: str) -> bool:
    """True when the predicted answer matches the ground truth under the cascade of docs/prism_method.md §7.1.

    Both sides go through :func:`split_multi`; when either has more than one value the counts must
    match and every pair must pass :func:`single_judge` (math_verify is skipped for multi-valued
    answers). Otherwise the normalised values go through :func:`rule_judge`, and when no rule
    decided, math_verify compares the raw strings. Any exception counts as a mismatch.
    """
    try:
        p_parts, g_parts = split_multi(pred), split_multi(gt)
        if len(p_parts) > 1 or len(g_parts) > 1:
            return len(p_parts) == len(g_parts) and all(
                single_judge(normalise(p), normalise(g)) for p, g in zip(p_parts, g_parts)
            )
        decided = rule_judge(normalise(pred), normalise(gt))
        if decided is None:
            return math_verify_equal(pred, gt)
        return decided
    except Exception:
        return False
