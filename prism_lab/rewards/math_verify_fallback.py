"""The last step of the judge: ``math_verify`` symbolic equivalence, bounded in time, safe in any thread.

``math_verify`` (and with it sympy) is imported lazily, only when the rule checks have not decided.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time

from prism_lab.rewards.normalise import normalise, strip_math_delimiters

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
