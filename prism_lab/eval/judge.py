"""The model judge of the builtin backend: an OpenAI-compatible chat-completions endpoint asked about every answer
the rule judge did not accept (the paper's protocol, docs/prism_method.md §8: a served Qwen2.5-32B-Instruct, a
binary verdict on the full response). Configured by the eval config's ``judge:`` section
(``prism_lab.config.eval.JudgeSettings``)::

    judge: {url: http://127.0.0.1:8000/v1, model: Qwen2.5-32B-Instruct, api_key_env: PRISM_JUDGE_API_KEY}

- :meth:`JudgeClient.identity` asks ``/models`` once, before anything is generated: the configured model must be
  served; its ``root`` (the weights a vLLM server loaded; else its id) is the judge's version. Both enter every
  judged benchmark's evaluation fingerprint (``prism_lab.eval.fingerprint``), so another judge is another protocol.
- :meth:`JudgeClient.verdict` asks ``/chat/completions`` (temperature 0) with the same prompt as the VLMEvalKit
  backend's judge (``prism_lab.eval.vlmeval.judge.JUDGE_PROMPT``); the reply must hold exactly one standalone
  ``0`` or ``1``. Verdicts are cached on disk by (model, version, prompt), so a rerun does not ask again.
- A judge that does not answer (connection refused, timeout, HTTP error, a reply without a verdict) raises
  :class:`JudgeError`, one line naming the URL, after ``retries`` more tries for the transient failures: the eval
  run fails, and no answer is ever scored wrong because the judge was down.
- :func:`judge_rows` applies it to scored prediction rows: rows the rule accepted, and empty responses, are kept as
  the rule scored them (``judged_by: "rule"``); the others take the judge's verdict (``judged_by: "judge"``).

Standard library only (urllib); nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prism_lab.errors import PrismError

__all__ = ["JudgeClient", "JudgeError", "VERDICT_CACHE_DIR", "judge_rows"]

#: Subdirectory of the prediction cache that holds the judge's verdicts.
VERDICT_CACHE_DIR = "judge"
#: Bump when the request the judge is sent changes (it enters every verdict's cache key).
REQUEST_VERSION = 1
_VERDICT = re.compile(r"(?<![\w.])[01](?![\w.])")
_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


class JudgeError(PrismError):
    """The judge endpoint did not give a verdict (the evaluation fails; nothing is scored)."""


class JudgeClient:
    """Stdlib HTTP client of one configured judge (``settings``: a ``JudgeSettings``); ``cache_dir``: where verdicts
    are kept (None: not kept). ``env``: where ``api_key_env`` is read (default ``os.environ``)."""

    def __init__(self, settings: Any, cache_dir: str | Path | None = None, env: Mapping[str, str] | None = None,
                 backoff_s: float = 0.5) -> None:
        self.settings = settings
        self.url = settings.url
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.backoff_s = backoff_s
        self._env = os.environ if env is None else env
        self._served: dict[str, Any] | None = None
        self.calls = 0
        self.cached = 0
        self.system_fingerprints: set[str] = set()
        self.answered_by: set[str] = set()

    # -- HTTP
    def _error(self, what: str) -> JudgeError:
        return JudgeError(f"judge {self.url}: {what}; no answer was scored (start the endpoint or fix eval.judge)")

    def _request(self, path: str, payload: dict[str, Any] | None) -> Any:
        req = urllib.request.Request(f"{self.url}{path}", method="GET" if payload is None else "POST",
                                     data=None if payload is None else json.dumps(payload).encode("utf-8"))
        req.add_header("Content-Type", "application/json")
        name = self.settings.api_key_env
        if name:
            key = self._env.get(name)
            if not key:
                raise self._error(f"environment variable {name} (eval.judge.api_key_env) is not set")
            req.add_header("Authorization", f"Bearer {key}")
        tries = 1 + int(self.settings.retries)
        for attempt in range(tries):
            why = None
            try:
                with urllib.request.urlopen(req, timeout=self.settings.timeout_s) as resp:  # noqa: S310 - configured
                    body = resp.read()
            except urllib.error.HTTPError as e:
                why = f"HTTP {e.code} {e.reason} from {path}"
                if e.code not in _TRANSIENT_HTTP:
                    raise self._error(why) from None
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
                reason = getattr(e, "reason", e)
                why = f"no answer from {path} ({reason or type(e).__name__})"
            else:
                try:
                    return json.loads(body.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    raise self._error(f"{path} answered something that is not JSON: {body[:80]!r}") from None
            if attempt + 1 < tries:
                time.sleep(self.backoff_s * 2**attempt)
        raise self._error(f"{why} after {tries} tries")

    # -- identity
    def identity(self) -> tuple[str, str]:
        """(model, version): the configured model, and its served ``root`` (else its id), from ``/models``."""
        if self._served is None:
            listing = self._request("/models", None)
            data = listing.get("data") if isinstance(listing, dict) else None
            if not isinstance(data, list):
                raise self._error("/models answered without a `data` list of models")
            ids = [str(m.get("id")) for m in data if isinstance(m, dict)]
            entry = next((m for m in data if isinstance(m, dict) and m.get("id") == self.settings.model), None)
            if entry is None:
                raise self._error(f"model {self.settings.model!r} (eval.judge.model) is not served; it serves: "
                                  f"{', '.join(ids) or '(none)'}")
            self._served = {k: v for k, v in entry.items() if k not in ("created", "permission")}
        return self.settings.model, str(self._served.get("root") or self._served.get("id"))

    def summary(self) -> dict[str, Any]:
        """What the eval run records about its judge (results.json, run.json)."""
        model, version = self.identity()
        return {"url": self.url, "model": model, "version": version, "served": self._served,
                "answered_by": sorted(self.answered_by), "system_fingerprints": sorted(self.system_fingerprints),
                "calls": self.calls, "cached": self.cached}

    # -- verdicts
    def _cache_path(self, messages: list[dict[str, str]]) -> Path | None:
        if self.cache_dir is None:
            return None
        model, version = self.identity()
        blob = json.dumps({"v": REQUEST_VERSION, "model": model, "version": version, "messages": messages},
                          sort_keys=True, ensure_ascii=False)
        return self.cache_dir / f"{hashlib.sha256(blob.encode()).hexdigest()}.json"

    def verdict(self, question: str, gt: str, prediction: str) -> bool:
        """True when the judge says the response's final answer is right (from the cache when asked before)."""
        from prism_lab.eval.predictions import write_json_atomic
        from prism_lab.eval.vlmeval.judge import JUDGE_PROMPT

        messages = [{"role": "user", "content": JUDGE_PROMPT.format(question=question, gt=gt, prediction=prediction)}]
        path = self._cache_path(messages)
        if path is not None and path.is_file():
            try:
                self.cached += 1
                return bool(json.loads(path.read_text(encoding="utf-8"))["verdict"])
            except (OSError, ValueError, KeyError, TypeError):
                self.cached -= 1  # an unreadable entry is asked again
        self.calls += 1
        out = self._request("/chat/completions", {"model": self.settings.model, "messages": messages,
                                                   "temperature": 0.0, "max_tokens": 8, "seed": 0})
        try:
            text = str(out["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError):
            raise self._error(f"/chat/completions answered without choices[0].message.content: {str(out)[:120]}"
                              ) from None
        found = _VERDICT.findall(text)
        if len(found) != 1:
            raise self._error(f"the reply {text[:80]!r} holds no single 0/1 verdict")
        if isinstance(out, dict):
            if out.get("system_fingerprint"):
                self.system_fingerprints.add(str(out["system_fingerprint"]))
            if out.get("model"):
                self.answered_by.add(str(out["model"]))
        verdict = found[0] == "1"
        if path is not None:
            write_json_atomic(path, {"verdict": verdict, "reply": text, "model": out.get("model"),
                                     "system_fingerprint": out.get("system_fingerprint")})
        return verdict


def judge_rows(rows: Sequence[dict[str, Any]], judge: JudgeClient) -> list[dict[str, Any]]:
    """``rows`` (scored by the rule) with the judge's verdict on each one the rule did not accept (copies)."""
    out = []
    for r in rows:
        r = dict(r)
        if r.get("correct") or not str(r.get("prediction") or "").strip():
            r["judged_by"] = "rule"
        else:
            r["correct"] = judge.verdict(str(r.get("prompt") or r.get("question") or ""), str(r.get("answer")),
                                         str(r.get("prediction")))
            r["judged_by"] = "judge"
        out.append(r)
    return out
