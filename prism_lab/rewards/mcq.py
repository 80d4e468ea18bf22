"""Multiple-choice answers: the option letter of a ground truth, and the letter a prediction chooses."""

from __future__ import annotations

import re

_GT_BARE_LETTER_RE = re.compile(r"^[A-H]$")
_GT_PAREN_LETTER_RE = re.compile(r"^\(([A-H])\)(?:\s.*)?$", re.DOTALL)
_GT_DOT_LETTER_RE = re.compile(r"^([A-H])\.\s+[\d+\-−(\[{]")
_PRED_BARE_LETTER_RE = re.compile(r"^[(\[]?\s*([A-Ha-h])\s*[)\]]?$")
_LETTER_PATTERNS = (
    (
        10,
        re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)\s*:?|:)\s*[(\[]?([A-H])(?![A-Za-z])"),
    ),
    (8, re.compile(r"\(([A-H])\)")),
    (6, re.compile(r"(?<![A-Za-z])([A-H])[.)]")),
)


def gt_mcq_letter(gt: str) -> str | None:
    """The option letter when the (normalised) GT is an MCQ answer, else None.

    MCQ forms: a bare letter A-H; ``(X)`` optionally followed by text; ``X.`` followed by
    whitespace and a digit, sign or opening bracket.
    """
    gt = gt.strip()
    if _GT_BARE_LETTER_RE.match(gt):
        return gt
    m = _GT_PAREN_LETTER_RE.match(gt) or _GT_DOT_LETTER_RE.match(gt)
    return m.group(1) if m else None


def is_mcq_ground_truth(gt: str) -> bool:
    """True when the (normalised) GT is one of the MCQ letter forms of :func:`gt_mcq_letter`."""
    return gt_mcq_letter(gt) is not None


def extract_mcq_letter(pred: str) -> str | None:
    """The option letter a (normalised) prediction chooses, upper-cased, or None.

    A bare, optionally bracketed letter is taken directly (either case). Otherwise the best
    pattern wins -- "answer/option/choice is X" (10) > "(X)" (8) > "X." or "X)" (6) -- and
    within a priority the earliest occurrence.
    """
    pred = pred.strip()
    m = _PRED_BARE_LETTER_RE.match(pred)
    if m:
        return m.group(1).upper()
    best: tuple[int, int, str] | None = None  # (-priority, position, letter): min() is best
    for priority, pattern in _LETTER_PATTERNS:
        hit = pattern.search(pred)
        if hit is not None:
            cand = (-priority, hit.start(1), hit.group(1))
            best = cand if best is None or cand < best else best
    return None if best is None else best[2]
