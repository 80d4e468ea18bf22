"""Prediction rows, their JSONL files, and the prediction cache.

A prediction row is a plain dict (one per benchmark item)::

    {"index", "question", "answer", "prediction", "extracted", "has_answer_tag", "correct",
     "format_valid", "n_tokens", "finish_reason", "category"}

The cache keeps every benchmark's rows under ``<root>/cache/predictions/<hash>.jsonl`` where the hash
covers everything that decides what the model is asked and how it generates: the checkpoint key, the
benchmark name and its TSV's sha256, the generation settings (seed and limit included), the prompting
and the backend (see :func:`cache_key`). A hit means no generation at all; re-scoring the cached
predictions is cheap and is done again on every read, so a judge fix never forces regeneration.
The batch size is not part of the key: it is a throughput knob (greedy results do not depend on it; a
sampled run with another batch size draws different, equally valid samples).
Files are written atomically (temporary file + ``os.replace``): a crash never leaves a half cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prism_lab.errors import DataError

#: Bump when the way prompts are built changes (it enters every cache key).
PROMPT_VERSION = 1
#: Bump when the layout of cached rows changes.
CACHE_FORMAT = 1

__all__ = [
    "CACHE_FORMAT",
    "PROMPT_VERSION",
    "PredictionCache",
    "cache_key",
    "file_sha256",
    "read_jsonl",
    "write_json_atomic",
    "write_jsonl_atomic",
]


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(
    *,
    checkpoint_key: str,
    benchmark: str,
    file_sha256: str,
    settings: Mapping[str, Any],
    backend: str,
    prompting: Mapping[str, Any] | None = None,
) -> str:
    """The content hash naming one cache entry (hex sha256 of the canonical JSON of every field)."""
    fields = {
        "format": CACHE_FORMAT,
        "prompt_version": PROMPT_VERSION,
        "checkpoint_key": str(checkpoint_key),
        "benchmark": benchmark,
        "file_sha256": file_sha256,
        "settings": dict(settings),
        "prompting": dict(prompting or {}),
        "backend": backend,
    }
    return hashlib.sha256(_canonical(fields).encode("utf-8")).hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_jsonl_atomic(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows as JSON lines (UTF-8, one object per line), atomically."""
    path = Path(path)
    text = "".join(json.dumps(dict(r), ensure_ascii=False, default=str) + "\n" for r in rows)
    _atomic_write_text(path, text)
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write one JSON document (indented, sorted keys), atomically."""
    path = Path(path)
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read JSON lines; a malformed line raises DataError naming the file and the line number."""
    path = Path(path)
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}: line {i}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {i}: expected a JSON object, got {type(obj).__name__}")
            rows.append(obj)
    return rows


class PredictionCache:
    """Prediction rows by cache key under one directory (``<root>/cache/predictions``)."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.jsonl"

    def meta_path(self, key: str) -> Path:
        return self.dir / f"{key}.meta.json"

    def get(self, key: str) -> list[dict[str, Any]] | None:
        """The cached rows, or None on a miss (also when the entry is unreadable: it is regenerated)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return read_jsonl(p)
        except (OSError, DataError):
            return None

    def put(self, key: str, rows: Iterable[Mapping[str, Any]], meta: Mapping[str, Any] | None = None) -> Path:
        """Store rows (the metadata sidecar first, so a visible entry always has its description)."""
        if meta is not None:
            write_json_atomic(self.meta_path(key), dict(meta))
        return write_jsonl_atomic(self.path(key), rows)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.path(key).is_file()
