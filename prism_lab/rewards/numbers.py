"""Numbers in answers: plain decimals, relative-tolerance equality, and ``(x, y)`` coordinate pairs."""

from __future__ import annotations

import re

_NUM = r"[-+−]?(?:\d+(?:\.\d*)?|\.\d+)"
_PAIR_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")


def coordinate_pairs(s: str) -> list[tuple[float, float]]:
    """All ``(x, y)`` pairs of plain numbers in ``s``, in order of appearance."""
    return [
        (float(a.replace("−", "-")), float(b.replace("−", "-"))) for a, b in _PAIR_RE.findall(s)
    ]


#: 1e-6, plus a hair so that a written difference of exactly 1e-6 survives float rounding.
_COORD_TOL = 1e-6 * (1 + 1e-9)


def coordinates_equal(p: list[tuple[float, float]], g: list[tuple[float, float]]) -> bool:
    """Same number of pairs, compared in order, every coordinate within 1e-6."""
    return len(p) == len(g) and all(
        abs(px - gx) <= _COORD_TOL and abs(py - gy) <= _COORD_TOL
        for (px, py), (gx, gy) in zip(p, g)
    )


_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")


def parse_number(s: str) -> float | None:
    """A plain decimal number (optional sign and exponent; Unicode minus allowed), else None."""
    s = s.strip().replace("−", "-")
    if not _NUMBER_RE.match(s):
        return None
    try:
        return float(s)
    except ValueError:  # pragma: no cover - the regex only admits float syntax
        return None


def numeric_equal(pred: float, gt: float, rel_tol: float = 1e-6) -> bool:
    """``|pred - gt| / |gt| < rel_tol``; a GT of 0 needs an exact 0."""
    if gt == 0:
        return pred == 0
    return abs(pred - gt) / abs(gt) < rel_tol
