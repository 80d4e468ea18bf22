"""The RLVR rule reward (prism_spec.md section 7.1): a format gate plus a rule-based answer judge.

``compute_score(response, ground_truth)`` returns ``RewardResult(score, acc, format)``:

1. the response fails the section-2 format regex          -> (0, 0, 0)
2. the first ``<answer>`` block is empty or >= 1024 chars -> (0.2, 0, 1)
3. otherwise acc = judge(answer, gt) and score = 0.8 * acc + 0.2.

``judge`` is a cascade of small pure functions: multi-value split, normalisation, then a single
judge (coordinates -> multiple-choice letter -> exact / numeric / loose-text / unit-stripped text
-> ``math_verify``). ``math_verify`` (and with it sympy) is imported lazily, only when the rule
checks have not decided, so importing this module is cheap.

Deliberate deviations from a literal reading of the spec, each to avoid rewarding a wrong answer,
are marked "[guard]" below.
"""

from __future__ import annotations

import logging
import re
import signal
import string
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prism_lab.prompts import extract_answer, is_format_valid

__all__ = [
    "RewardResult",
    "compute_score",
    "judge",
    "rule_judge",
    "single_judge",
    "normalise",
    "strip_math_delimiters",
    "split_multi",
    "is_mcq_ground_truth",
    "gt_mcq_letter",
    "extract_mcq_letter",
    "coordinate_pairs",
    "parse_number",
    "numeric_equal",
    "strip_units",
    "loose_text",
    "math_verify_equal",
]

# --------------------------------------------------------------------------------------------
# Result and entry point
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardResult:
    """One response's reward: ``score = acc_weight * acc + format_weight * format``."""

    score: float
    acc: float
    format: float

    def to_dict(self) -> dict[str, float]:
        """The original scorer's output dict ``{score, acc_reward, format_reward}``."""
        return {"score": self.score, "acc_reward": self.acc, "format_reward": self.format}


def compute_score(
    response: str,
    ground_truth: str,
    equivalent_answers: Sequence[str] = (),
    *,
    acc_weight: float = 0.8,
    format_weight: float = 0.2,
    max_answer_chars: int = 1024,
) -> RewardResult:
    """Score a decoded response against the ground truth (and any equivalent answers).

    Format failure gives (0, 0, 0). A valid format with an empty answer, or an answer of
    ``max_answer_chars`` characters or more, gives (format_weight, 0, 1). Otherwise acc is 1 when
    the answer matches the ground truth or any of ``equivalent_answers`` under :func:`judge`.
    """
    if not isinstance(response, str) or not is_format_valid(response):
        return RewardResult(0.0, 0.0, 0.0)
    answer = extract_answer(response) or ""
    if not answer or len(answer) >= max_answer_chars:
        return RewardResult(float(format_weight), 0.0, 1.0)
    targets = [str(ground_truth), *(str(a) for a in equivalent_answers)]
    acc = 1.0 if any(judge(answer, t) for t in targets) else 0.0
    return RewardResult(acc_weight * acc + format_weight * 1.0, acc, 1.0)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------

_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|mathrm)\s*\{")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_BRACE_SPACE_RE = re.compile(r"\s*([{}])\s*")
_WS_RE = re.compile(r"\s+")
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
    """Canonical form of one answer, following the spec's normalisation steps in order.

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
    s = _WS_RE.sub(" ", s).strip()
    s = _THOUSANDS_RE.sub("", s)
    s = s.replace("，", ",")
    if s.endswith(".") or s.endswith("。"):
        s = s[:-1].rstrip()
    return s


# --------------------------------------------------------------------------------------------
# Multi-value split
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Coordinates
# --------------------------------------------------------------------------------------------

_NUM = r"[-+−]?(?:\d+(?:\.\d*)?|\.\d+)"
_PAIR_RE = re.compile(rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)")


def coordinate_pairs(s: str) -> list[tuple[float, float]]:
    """All ``(x, y)`` pairs of plain numbers in ``s``, in order of appearance."""
    return [
        (float(a.replace("−", "-")), float(b.replace("−", "-"))) for a, b in _PAIR_RE.findall(s)
    ]


#: 1e-6, plus a hair so that a written difference of exactly 1e-6 survives float rounding.
_COORD_TOL = 1e-6 * (1 + 1e-9)


def _coordinates_equal(p: list[tuple[float, float]], g: list[tuple[float, float]]) -> bool:
    """Same number of pairs, compared in order, every coordinate within 1e-6."""
    return len(p) == len(g) and all(
        abs(px - gx) <= _COORD_TOL and abs(py - gy) <= _COORD_TOL
        for (px, py), (gx, gy) in zip(p, g)
    )


# --------------------------------------------------------------------------------------------
# Multiple choice
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Numbers and units
# --------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")

_LENGTH = (
    "mm cm dm m km nm um μm µm in inch inches ft foot feet yd yard yards mi mile miles "
    "meter meters metre metres centimeter centimeters centimetre centimetres millimeter "
    "millimeters millimetre millimetres kilometer kilometers kilometre kilometres"
).split()
_MASS = (
    "mg g kg t ton tons tonne tonnes lb lbs pound pounds oz ounce ounces gram grams "
    "kilogram kilograms milligram milligrams"
).split()
_TIME = (
    "ms s sec secs second seconds min mins minute minutes h hr hrs hour hours day days "
    "week weeks month months year years yr yrs"
).split()
_VOLUME = "ml mL l L liter liters litre litres milliliter milliliters millilitre millilitres".split()
_COUNT = (
    "people person persons student students child children time times item items piece pieces "
    "object objects unit units"
).split()
_DEGREE = (
    "° °C °F ℃ ℉ degree degrees \\circ ^\\circ ^{\\circ} \\circ C \\circ F ^\\circ C ^\\circ F "
    "^{\\circ}C ^{\\circ}F ^\\circC ^\\circF"
).split(" ")
_PERCENT = ["%", "\\%", "percent"]
_CHINESE = (
    "个 只 条 人 名 位 次 本 张 辆 块 元 角 岁 天 年 月 周 小时 分钟 秒 毫米 厘米 分米 米 千米 公里 "
    "克 千克 公斤 吨 升 毫升 平方米 平方厘米 平方分米 平方千米 立方米 立方厘米 立方分米 度 棵 朵 支 "
    "件 台 头 匹 颗 倍"
).split()


def _unit_alternation() -> str:
    """One regex alternation of every recognised unit, longest first."""
    units = set(_LENGTH + _MASS + _TIME + _VOLUME + _COUNT + _DEGREE + _PERCENT + _CHINESE)
    alts = [re.escape(u).replace("\\ ", r"\s*") for u in units]
    length = "|".join(re.escape(u) for u in sorted(_LENGTH, key=len, reverse=True))
    alts.append(rf"(?:square|sq\.?|cubic)\s+(?:{length})")
    alts.append(rf"(?:{length})\s*(?:\^\s*\{{?\s*[23]\s*\}}?|[²³])")
    return "|".join(sorted(alts, key=len, reverse=True))


_UNIT_ALT = _unit_alternation()
_UNIT_SPACED_RE = re.compile(rf"^(?P<value>.*?\S)\s+(?P<unit>{_UNIT_ALT})$", re.DOTALL)
_UNIT_ATTACHED_RE = re.compile(rf"^(?P<value>.*?[\d}})])(?P<unit>{_UNIT_ALT})$", re.DOTALL)


def _canonical_unit(unit: str) -> str:
    """A comparable spelling of a unit: degree, percent, square and cube forms unified."""
    u = re.sub(r"[\s{}]", "", unit)
    u = u.replace("℃", "°C").replace("℉", "°F").replace("^\\circ", "°").replace("\\circ", "°")
    u = u.replace("\\%", "%").replace("²", "^2").replace("³", "^3")
    u = u.lower()
    if u in ("degree", "degrees"):
        u = "°"
    if u == "percent":
        u = "%"
    power = ""
    m = re.match(r"^(square|sq\.?|cubic)(.+)$", u)
    if m:
        u, power = m.group(2), "^3" if m.group(1) == "cubic" else "^2"
    if u.isalpha() and len(u) > 3 and u.endswith("s"):
        u = u[:-1]
    return u + power


def strip_units(s: str) -> tuple[str, str | None]:
    """Split a trailing recognised unit off ``s``: ``(value, canonical unit)`` or ``(s, None)``.

    The unit must follow whitespace, or directly follow a digit, ``}`` or ``)`` (so ``Adam`` is
    not "Ada" + "m").
    """
    s = s.strip()
    m = _UNIT_SPACED_RE.match(s) or _UNIT_ATTACHED_RE.match(s)
    if m is None:
        return s, None
    return m.group("value").strip(), _canonical_unit(m.group("unit"))


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


# --------------------------------------------------------------------------------------------
# Loose text
# --------------------------------------------------------------------------------------------

_CJK_PUNCT = "，。、；：？！“”‘’（）《》〈〉【】「」『』〔〕…—～·￥"
_PUNCT_TABLE = str.maketrans("", "", string.punctuation + _CJK_PUNCT)
_NUMBER_TOKEN_RE = re.compile(r"(?:(?<![0-9A-Za-z])[-+−])?\d+(?:\.\d+)?")


def loose_text(s: str) -> str:
    """Lower-case, remove ``**`` and ASCII/CJK punctuation, collapse spaces."""
    s = s.lower().replace("**", "").translate(_PUNCT_TABLE)
    return _WS_RE.sub(" ", s).strip()


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
    return _WS_RE.sub("", pred.replace("**", "")) == _WS_RE.sub("", gt.replace("**", ""))


def _loose_equal(pred: str, gt: str) -> bool:
    """Equality of :func:`loose_text` forms, subject to :func:`_loose_text_allowed`."""
    lp, lg = loose_text(pred), loose_text(gt)
    return bool(lg) and lp == lg and _loose_text_allowed(pred, gt)


# --------------------------------------------------------------------------------------------
# The judge
# --------------------------------------------------------------------------------------------


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
        return _coordinates_equal(p_pairs, g_pairs)
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
    if _loose_equal(pred, gt):
        return True
    if p_unit == g_unit and (p_val == g_val or _loose_equal(p_val, g_val)):
        return True
    return False if both_numbers else None


def single_judge(pred: str, gt: str) -> bool:
    """One predicted value against one GT value (both normalised), rules only (no math_verify).

    This is what each pair of a multi-valued answer must pass.
    """
    return rule_judge(pred, gt) is True


def judge(pred: str, gt: str) -> bool:
    """True when the predicted answer matches the ground truth under the section-7.1 cascade.

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


# --------------------------------------------------------------------------------------------
# math_verify fallback
# --------------------------------------------------------------------------------------------

#: Per-operation limits handed to math_verify (whole seconds: it uses signal.alarm).
MV_PARSE_TIMEOUT_S = 2
MV_VERIFY_TIMEOUT_S = 2
#: Wall-clock budget for one math_verify comparison (all variants together).
MV_TOTAL_BUDGET_S = 8.0

_HAS_DELIMITER_RE = re.compile(r"\$|\\\(|\\\[|\\boxed")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")
_BARE_PERCENT_RE = re.compile(r"(?<!\\)%")


def _math_variants(s: str) -> list[str]:
    """The strings handed to ``math_verify.parse``: raw, delimiter-stripped, latex-normalised.

    A variant without math delimiters that looks like a formula (no bare multi-letter words, no
    CJK) is wrapped in ``$..$`` so math_verify parses it as LaTeX; otherwise ``2\\sqrt{3}`` would
    be read as ``2``. Plain words are not wrapped: ``$red$`` would parse as the product r*e*d and
    equal ``$erd$``.
    """
    out: list[str] = []
    for v in (s.strip(), strip_math_delimiters(s), normalise(s)):
        if not v:
            continue
        mathy = not _WORD_RE.search(v) and all(ord(ch) < 0x2E80 for ch in v)
        if not _HAS_DELIMITER_RE.search(v) and mathy:
            v = "$" + _BARE_PERCENT_RE.sub(r"\\%", v) + "$"
        if v not in out:
            out.append(v)
    return out


def _quiet_disabled_timeout_warning(record: logging.LogRecord) -> bool:
    """Logging filter: drop math_verify's "Timeout is disabled" warning (we bound time ourselves)."""
    return not str(record.msg).startswith("Timeout is disabled")


def _import_math_verify():
    """Import ``parse`` and ``verify`` lazily (sympy is slow to import); None when unavailable."""
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a core dependency
        return None
    for name in ("math_verify.parser", "math_verify.grader"):
        log = logging.getLogger(name)
        if _quiet_disabled_timeout_warning not in log.filters:
            log.addFilter(_quiet_disabled_timeout_warning)
    return parse, verify


def _mv_compare(pred: str, gt: str, use_signals: bool) -> bool:
    """parse + verify over every (gold variant, pred variant) pair; errors and timeouts -> False."""
    api = _import_math_verify()
    if api is None:  # pragma: no cover
        return False
    parse, verify = api
    deadline = time.monotonic() + MV_TOTAL_BUDGET_S
    parse_timeout = MV_PARSE_TIMEOUT_S if use_signals else None
    verify_timeout = MV_VERIFY_TIMEOUT_S if use_signals else None

    def parsed(variants: list[str]) -> list:
        out = []
        for v in variants:
            if time.monotonic() > deadline:
                break
            try:
                res = parse(v, parsing_timeout=parse_timeout)
            except Exception:
                res = []
            if res:
                out.append(res)
        return out

    golds, preds = parsed(_math_variants(gt)), parsed(_math_variants(pred))
    for g in golds:
        for t in preds:
            if time.monotonic() > deadline:
                return False
            try:
                if verify(g, t, timeout_seconds=verify_timeout):
                    return True
            except Exception:
                continue
    return False


def math_verify_equal(pred: str, gt: str) -> bool:
    """``math_verify`` equivalence of two answers, safe in any thread.

    math_verify's own timeouts use ``signal.alarm``, which only works in the main thread. There
    they are used directly. Elsewhere (reward workers, thread pools) math_verify runs with its
    timeouts disabled in a daemon thread that is waited on for ``MV_TOTAL_BUDGET_S``; a comparison
    that overruns counts as 0 (the abandoned thread finishes in the background).
    """
    try:
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and hasattr(signal, "SIGALRM"):
            return _mv_compare(pred, gt, use_signals=True)
        result: list[bool] = []
        worker = threading.Thread(
            target=lambda: result.append(_mv_compare(pred, gt, use_signals=False)),
            name="prism-math-verify",
            daemon=True,
        )
        worker.start()
        worker.join(MV_TOTAL_BUDGET_S + 1.0)
        return bool(result and result[0])
    except Exception:
        return False

