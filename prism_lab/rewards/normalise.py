"""Normalisation of one answer string and the split of a multi-valued answer into its values
(the PRISM rule reward's normalisation steps; see docs/prism_method.md §7.1)."""

from __future__ import annotations

import re

_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|mathrm)\s*\{")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_BRACE_SPACE_RE = re.compile(r"\s*([{}])\s*")
WHITESPACE_RE = re.compile(r"\s+")
_THOUSANDS_RE = re.compile(r"(?<=\d)[,，](?=\d{3}(?!\d))")


def strip_math_delimiters(s: str) -> str:
    """Trim, then remove one enclosing ``$$..$$``, ``\\[..\\]``, ``\\(..\\)`` or ``$..$`` pair.

    The pair must really enclose the whole string: ``$1$ and $2$`` is left alone.
    """
    s = s.strip()
    for opener, closer in _DELIMITERS:
        if len(s) >= len(opener) + len(closer) and s.startswith(opener) and s.endswith(closer):
            inner = s[len(opener) : len(s) - len(closer)]
            if closer not in inner and (opener != "$" or "$" not in inner):
                return inner.strip()
    return s


def _unwrap_text_commands(s: str) -> str:
    """Replace every ``\\text{X}`` / ``\\mathrm{X}`` by ``X`` (brace-matched, nesting allowed)."""
    for _ in range(64):  # bounded: each pass removes one wrapper
        m = _TEXT_WRAPPER_RE.search(s)
        if m is None:
            return s
        depth, i = 1, m.end()
        while i < len(s) and depth:
            depth += {"{": 1, "}": -1}.get(s[i], 0)
            i += 1
        inner = s[m.end() : i - 1] if depth == 0 else s[m.end() :]
        s = s[: m.start()] + inner + s[i:]
    return s


def normalise(s: str) -> str:
    """Canonical form of one answer, following the normalisation steps of docs/prism_method.md §7.1 in order.

    Trim; strip one enclosing math delimiter; ``\\dfrac``/``\\tfrac`` -> ``\\frac``; unwrap
    ``\\text{}``/``\\mathrm{}``; drop ``\\left``/``\\right``; tighten braces; collapse
    whitespace; remove thousands separators (``,`` or ``，`` between a digit and a 3-digit group),
    turn any other full-width comma into ``,``; drop one trailing period.
    """
    s = strip_math_delimiters(str(s))
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _unwrap_text_commands(s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _BRACE_SPACE_RE.sub(r"\1", s)
    s = WHITESPACE_RE.sub(" ", s).strip()
    s = _THOUSANDS_RE.sub("", s)
    s = s.replace("，", ",")
    if s.endswith(".") or s.endswith("。"):
        s = s[:-1].rstrip()
    return s


_NUMBERED_MARKER_RE = re.compile(r"\(\d{1,2}\)")
_SEMICOLON_RE = re.compile(r"(?<!\\);|；")
_PART_TRIM = " \t\n,;，；"


def _split_top_level_commas(s: str) -> list[str]:
    """Split on ``,``/``，`` at bracket depth 0, skipping ``\\,`` and thousands separators."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif ch in ",，" and depth == 0:
            if i > 0 and s[i - 1] == "\\":
                continue
            if _THOUSANDS_RE.match(s, i):
                continue
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def split_multi(s: str) -> list[str]:
    """Split an answer into its values; a single-valued answer gives a one-element list.

    In order: at least two ``(k)`` numbered markers with the first starting within the first
    3 characters -> the texts after each marker; else ``;``/``；``; else commas at bracket
    depth 0. Parts are trimmed (and trailing separators removed); empty parts are dropped.
    """
    s = strip_math_delimiters(str(s))
    markers = list(_NUMBERED_MARKER_RE.finditer(s))
    if len(markers) >= 2 and markers[0].start() < 3:
        bounds = [m.end() for m in markers]
        ends = [m.start() for m in markers[1:]] + [len(s)]
        return [s[b:e].strip(_PART_TRIM) for b, e in zip(bounds, ends)]
    for splitter in (_SEMICOLON_RE.split, _split_top_level_commas):
        parts = [p.strip(_PART_TRIM) for p in splitter(s)]
        parts = [p for p in parts if p]
        if len(parts) > 1:
            return parts
    return [s.strip(_PART_TRIM) or s]
