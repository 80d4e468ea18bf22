"""Rule-based scoring where VLMEvalKit would need an LLM judge, plus an optional OpenAI-compatible judge.

The paper's judging pattern (docs/prism_method.md §8): take the ``<answer>`` content when present, decide
with a rule first, and ask the LLM judge (binary 0/1, fed the full raw prediction) only when the rule
says wrong. Here:

- :func:`rule_correct` is the PRISM rule judge (``rewards.judge`` cascade -- normalisation, MCQ letter,
  numeric, loose text, math-verify -- through the built-in backend's :func:`~prism_lab.eval.builtin.judge_answer`),
  so the two backends score an answer identically;
- :func:`math_row_correct` applies it to one row of a MathVista / MathVision / MathVerse TSV (whose
  VLMEvalKit ``evaluate`` asserts a working GPT judge): multiple-choice rows accept the option letter or
  the option text, MathVista float answers are compared at the row's ``precision``;
- :class:`OpenAIJudge` is the optional fallback: any OpenAI-compatible ``/v1/chat/completions`` server
  (e.g. a local vLLM serving Qwen2.5-32B-Instruct, as in the paper). Configure it with environment
  variables (:meth:`JudgeConfig.from_env`): ``PRISM_JUDGE_URL`` (base URL, e.g.
  ``http://127.0.0.1:8000/v1``), ``PRISM_JUDGE_MODEL`` (served model name; default: the first model the
  server lists), ``PRISM_JUDGE_API_KEY`` (default ``EMPTY``), ``PRISM_JUDGE_TIMEOUT`` (seconds, default 60).
  Without ``PRISM_JUDGE_URL`` scoring is rule-only.

Nothing here imports VLMEvalKit.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import string
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prism_lab.prompts import extract_answer

__all__ = [
    "JudgeConfig",
    "OpenAIJudge",
    "answer_of",
    "judge_from_env",
    "math_row_correct",
    "row_options",
    "rule_correct",
]

_LETTERS = string.ascii_uppercase


def answer_of(text: str) -> tuple[str, bool]:
    """``(answer, has_tag)``: the first ``<answer>`` block's content, else the whole stripped text."""
    text = "" if text is None else str(text)
    got = extract_answer(text)
    return (got, True) if got is not None else (text.strip(), False)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def rule_correct(answer: str, gt: str, *, kind: str, options: Mapping[str, str] | None = None) -> bool:
    """The PRISM rule judge on an extracted answer (identical to the built-in backend's scoring)."""
    from prism_lab.eval.builtin import judge_answer

    return bool(judge_answer(answer, gt, kind=kind, options=dict(options or {})))


def _literal_list(v: Any) -> list[str]:
    """A list-literal column (``"['3', '4']"``) as a list of strings; anything else -> []."""
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    if _missing(v):
        return []
    try:
        obj = ast.literal_eval(str(v))  # literal_eval only: never eval() data or model text
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return []
    return [str(x) for x in obj] if isinstance(obj, (list, tuple)) else []


def row_options(row: Mapping[str, Any]) -> dict[str, str]:
    """A row's options by letter: ``A``..``Z`` columns, else a ``choices`` / ``options`` list literal."""
    opts = {c: str(row[c]).strip() for c in _LETTERS if c in row and not _missing(row[c])}
    if opts:
        return opts
    for col in ("choices", "options"):
        vals = _literal_list(row.get(col))
        if vals:
            return {_LETTERS[i]: v.strip() for i, v in enumerate(vals[: len(_LETTERS)])}
    return {}


_NUM_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")


def _float(s: str) -> float | None:
    s = s.strip().replace(",", "")
    return float(s) if _NUM_RE.match(s) else None


def math_row_correct(answer: str, row: Mapping[str, Any]) -> bool:
    """Rule verdict for one MathVista / MathVision / MathVerse row (``answer`` = extracted answer).

    - the ground truth is ``answer`` (MathVista multiple choice: also ``answer_option``, the letter);
    - with options (``A``..``Z`` columns or a ``choices`` list): the letter of the right option, or its
      text, is accepted (a different letter is wrong);
    - MathVista ``answer_type: float`` with a ``precision``: both sides rounded to that many decimals;
    - otherwise the PRISM rule judge (math-verify as its last step).
    """
    answer = (answer or "").strip()
    gt = "" if _missing(row.get("answer")) else str(row.get("answer")).strip()
    if not answer or not gt:
        return False
    options = row_options(row)
    gt_letter = None
    if not _missing(row.get("answer_option")):
        gt_letter = str(row["answer_option"]).strip()
    elif gt in options:
        gt_letter = gt
    else:
        hits = [k for k, v in options.items() if v == gt]
        gt_letter = hits[0] if len(hits) == 1 else None
    if options and gt_letter in options:
        return rule_correct(answer, gt_letter, kind="mcq", options=options)
    if str(row.get("answer_type", "")).strip() == "float" and not _missing(row.get("precision")):
        p, g = _float(answer), _float(gt)
        if p is not None and g is not None:
            try:
                nd = int(float(row["precision"]))
            except (TypeError, ValueError):
                nd = None
            if nd is not None:
                return round(p, nd) == round(g, nd)
    return rule_correct(answer, gt, kind="open")


# ----------------------------------------------------------------------------------------------- LLM judge
@dataclass(frozen=True)
class JudgeConfig:
    """Where the optional OpenAI-compatible judge is (``url`` None = no judge)."""

    url: str | None = None
    model: str | None = None
    api_key: str = "EMPTY"
    timeout: float = 60.0
    max_tokens: int = 16

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "JudgeConfig":
        env = os.environ if env is None else env
        url = (env.get("PRISM_JUDGE_URL") or "").strip() or None
        return cls(
            url=url.rstrip("/") if url else None,
            model=(env.get("PRISM_JUDGE_MODEL") or "").strip() or None,
            api_key=env.get("PRISM_JUDGE_API_KEY") or "EMPTY",
            timeout=float(env.get("PRISM_JUDGE_TIMEOUT") or 60.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "timeout": self.timeout}


JUDGE_PROMPT = (
    "You are grading an answer to a visual question. Decide whether the model's response gives a final "
    "answer equivalent to the ground-truth answer (same choice, same value, or the same meaning; units and "
    "formatting may differ).\n\n"
    "Question:\n{question}\n\nGround-truth answer:\n{gt}\n\nModel response:\n{prediction}\n\n"
    "Reply with a single digit: 1 if the response's final answer is correct, 0 otherwise."
)


class OpenAIJudge:
    """Binary 0/1 judge over an OpenAI-compatible chat-completions endpoint (stdlib HTTP only).

    :meth:`correct` returns True/False, or None when the server could not be reached or gave no 0/1.
    """

    def __init__(self, config: JudgeConfig) -> None:
        if not config.url:
            raise ValueError("OpenAIJudge needs a URL (PRISM_JUDGE_URL)")
        self.config = config
        self._model = config.model
        self.calls = 0
        self.failures = 0

    def _post(self, path: str, payload: dict | None) -> dict:
        url = f"{self.config.url}{path}"
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        req = urllib.request.Request(url, data=data, method="GET" if payload is None else "POST")
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.config.api_key}")
        with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:  # noqa: S310 - configured URL
            return json.loads(resp.read().decode("utf-8"))

    def model(self) -> str:
        if self._model is None:
            listed = self._post("/models", None).get("data") or []
            if not listed:
                raise RuntimeError(f"judge server {self.config.url} lists no models; set PRISM_JUDGE_MODEL")
            self._model = str(listed[0]["id"])
        return self._model

    def correct(self, question: str, gt: str, prediction: str) -> bool | None:
        self.calls += 1
        prompt = JUDGE_PROMPT.format(question=question, gt=gt, prediction=prediction)
        try:
            out = self._post("/chat/completions", {
                "model": self.model(), "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.0, "max_tokens": self.config.max_tokens,
            })
            text = str(out["choices"][0]["message"]["content"] or "")
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError):
            self.failures += 1
            return None
        m = re.search(r"[01]", text)
        if m is None:
            self.failures += 1
            return None
        return m.group(0) == "1"


def judge_from_env(env: Mapping[str, str] | None = None) -> OpenAIJudge | None:
    """The configured fallback judge, or None (rule-only scoring)."""
    cfg = JudgeConfig.from_env(env)
    return OpenAIJudge(cfg) if cfg.url else None
