"""Loose text equality: case, markdown bold and punctuation ignored, numbers guarded."""

from __future__ import annotations

import re
import string

from prism_lab.rewards.normalise import WHITESPACE_RE

_CJK_PUNCT = "，。、；：？！“”‘’（）《》〈〉【】「」『』〔〕…—～·￥"
_PUNCT_TABLE = str.maketrans("", "", string.punctuation + _CJK_PUNCT)
_NUMBER_TOKEN_RE = re.compile(r"(?:(?<![0-9A-Za-z])[-+−])?\d+(?:\.\d+)?")


def loose_text(s: str) -> str:
    """Lower-case, remove ``**`` and ASCII/CJK punctuation, collapse spaces."""
    s = s.lower().replace("**", "").translate(_PUNCT_TABLE)
    return WHITESPACE_RE.sub(" ", s).strip()


def _loose_text_allowed(pred: str, gt: str) -> bool:
    """[guard] Loose text equality is only trusted for textual GTs with the same numbers.

    Removing punctuation would otherwise make ``-3`` equal ``3``, ``1.5`` equal ``15`` and
    ``(1, 2)`` equal ``[1, 2]``. So the sequence of signed decimal numbers must be the same on
    both sides, and the GT must contain a letter -- unless the two sides differ only by ``**``
    (markdown bold) and whitespace.
    """
    if _NUMBER_TOKEN_RE.findall(pred) != _NUMBER_TOKEN_RE.findall(gt):
        return False
    if any(ch.isalpha() for ch in gt):
        return True
    return WHITESPACE_RE.sub("", pred.replace("**", "")) == WHITESPACE_RE.sub("", gt.replace("**", ""))


def loose_equal(pred: str, gt: str) -> bool:
    """Equality of :func:`loose_text` forms, subject to :func:`_loose_text_allowed`."""
    lp, lg = loose_text(pred), loose_text(gt)
    return bool(lg) and lp == lg and _loose_text_allowed(pred, gt)
