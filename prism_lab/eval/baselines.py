"""Chance and majority-answer baselines of a benchmark, and the noise band around them.

A model that scores 50% on a Yes/No benchmark with half Yes answers may have learnt nothing: it can
always answer "No". These numbers say what a model that ignores the image gets, so the report can mark
every result that is not clearly above them. Pure functions of the benchmark's items (``BenchItem``:
``answer``, ``options``, ``category``) and the spec's judging kind; no model, no torch.

- :func:`chance`: the expected accuracy of a uniform random guess, per item, averaged over the items.
- :func:`majority`: the accuracy of answering every item with the most frequent answer of its category
  (the question type): the strongest answer that is constant per question type.
- :func:`noise_band`: the half-width around a baseline within which a result counts as "within noise".
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["NOISE_SE", "chance", "majority", "noise_band", "normalise_answer"]

#: A result is within noise of a baseline p on n items when it is below p + NOISE_SE standard errors.
NOISE_SE = 2.0

_YES_NO = {"yes": "yes", "no": "no"}


def normalise_answer(answer: Any) -> str:
    """A ground-truth answer as the judges compare it: stripped, and Yes/No case-insensitive (``"YES"`` and
    ``"yes"`` are one answer; an option letter or a number is kept as written)."""
    text = str(answer).strip()
    return _YES_NO.get(text.lower(), text)


def _is_yes_no(item: Any, kind: str) -> bool:
    """An item judged by the Yes/No rule: a row without options of a ``yesno`` benchmark."""
    return kind == "yesno" and not item.options


def _open_answers(items: Sequence[Any], kind: str) -> dict[Any, int]:
    """category -> how many distinct answers the open items (no options, not Yes/No) of that category have."""
    seen: dict[Any, set[str]] = {}
    for it in items:
        if not it.options and not _is_yes_no(it, kind):
            seen.setdefault(it.category, set()).add(normalise_answer(it.answer))
    return {cat: len(answers) for cat, answers in seen.items()}


def chance(items: Sequence[Any], kind: str) -> float | None:
    """Expected accuracy of a uniform random guess, a fraction in [0, 1] (None for no items).

    Per item: ``1 / len(options)`` for a row with options (a letter drawn from the offered ones);
    0.5 for a Yes/No row (``kind == "yesno"``, no options: two possible answers); for an open row,
    ``1 / (distinct answers among the open items of its category)``: an open answer space (any integer)
    has no finite uniform guess, so the guess is drawn from the answers that the benchmark itself uses
    for that question type, the smallest space a guesser who knows the answer key's support would use.
    Items without a category form one category.
    """
    if not items:
        return None
    distinct = _open_answers(items, kind)
    total = 0.0
    for it in items:
        if it.options:
            total += 1.0 / len(it.options)
        elif _is_yes_no(it, kind):
            total += 0.5
        else:
            total += 1.0 / distinct[it.category]
    return total / len(items)


def majority(items: Sequence[Any]) -> float | None:
    """Accuracy of answering every item with the most frequent (normalised) answer of its category, a
    fraction in [0, 1] (None for no items); ties pick any one of the most frequent (the accuracy is the same).

    Per category that is ``count of the most frequent answer / items of the category``, so the whole is
    the sum of those counts over all items. Items without a category form one category. A category of
    one item scores 1: the baseline knows the answer key's distribution, which is what makes it the
    strongest constant-per-question-type guess (a benchmark with many tiny categories has a high one).
    """
    if not items:
        return None
    by_cat: dict[Any, Counter[str]] = {}
    for it in items:
        by_cat.setdefault(it.category, Counter())[normalise_answer(it.answer)] += 1
    hits = sum(counts.most_common(1)[0][1] for counts in by_cat.values())
    return hits / len(items)


def noise_band(p: float, n: int) -> float:
    """Half-width of "within noise" of a baseline accuracy ``p`` (a fraction) on ``n`` items: NOISE_SE (2)
    binomial standard errors, ``2 * sqrt(p (1 - p) / n)``, about a 95% band for a model that is the
    baseline in disguise. NaN when n < 1 (no items: nothing can be told apart)."""
    if n < 1 or p is None or not math.isfinite(p):
        return math.nan
    p = min(max(float(p), 0.0), 1.0)
    return NOISE_SE * math.sqrt(p * (1.0 - p) / n)
