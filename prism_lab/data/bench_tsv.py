"""Benchmarks in VLMEvalKit's TSV layout (vlmevalkit_facts.md section 4.1).

Columns: ``index`` (unique), ``image`` (base64 PNG/JPEG; a value of <= 64 chars is the index of another
row whose image is reused) or ``image_path``, ``question``, ``answer`` (letter for MCQ, Yes/No, or
text), option columns ``A``, ``B``, ``C``, ``D``... (empty = absent), optional ``hint``, ``category``,
``l2-category``, ``split``; any other column is kept in ``BenchItem.extra``.
"""

from __future__ import annotations

import csv
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from prism_lab.data.images import check_image_bytes, decode_base64, load_image, resolve_path
from prism_lab.data.synth.questions import format_mcq
from prism_lab.errors import DataError

OPTION_LETTERS = tuple(string.ascii_uppercase)
_KNOWN = {"index", "image", "image_path", "question", "answer", "category"}

__all__ = ["BenchItem", "read_benchmark_tsv", "write_benchmark_tsv", "format_mcq", "OPTION_LETTERS"]


@dataclass
class BenchItem:
    """One benchmark row. ``image`` decodes lazily (base64 or path), ``prompt`` is the model's user text."""

    index: int | str
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    image_ref: Any = None  # base64 str or Path
    row: int = 0
    source: str = ""

    @property
    def image(self) -> Image.Image:
        return load_image(self.image_ref, where=f"{self.source}: row {self.row} (index {self.index}): field 'image'")

    @property
    def prompt(self) -> str:
        """The question plus options (MCQ), formatted exactly like the generated training prompts."""
        hint = self.extra.get("hint")
        q = f"Hint: {hint}\n{self.question}" if hint else self.question
        return format_mcq(q, self.options)

    @property
    def is_mcq(self) -> bool:
        return bool(self.options)


def _fail(path: Path, row: int, index: Any, fld: str, expected: str, got: Any) -> DataError:
    r = repr(got)
    if len(r) > 60:
        r = r[:57] + "..."
    at = f"row {row}" + ("" if index is None else f" (index {index})")
    return DataError(f"{path}: {at}: field '{fld}': expected {expected}, got {r}")


def _parse_index(v: str) -> int | str:
    s = v.strip()
    if s.lstrip("-").isdigit():
        return int(s)
    return s


def read_benchmark_tsv(path: str | Path, *, check_images: bool = True) -> list[BenchItem]:
    """Read and validate a VLMEvalKit-format TSV; rows are numbered from 0 (the header is not a row)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: benchmark TSV not found")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a readable TSV ({str(e).strip().splitlines()[0]})") from None
    cols = list(df.columns)
    for c in ("index", "question", "answer"):
        if c not in cols:
            raise DataError(f"{path}: missing column '{c}' (have: {', '.join(cols)})")
    if "image" not in cols and "image_path" not in cols:
        raise DataError(f"{path}: missing column 'image' (base64) or 'image_path' (have: {', '.join(cols)})")
    opt_cols = [c for c in cols if c in OPTION_LETTERS]
    extra_cols = [c for c in cols if c not in _KNOWN and c not in opt_cols]
    records = df.to_dict(orient="records")

    by_index: dict[str, str] = {}
    items: list[BenchItem] = []
    seen: set[Any] = set()
    for i, rec in enumerate(records):
        raw_idx = rec["index"]
        if not raw_idx.strip():
            raise _fail(path, i, None, "index", "a non-empty index", raw_idx)
        idx = _parse_index(raw_idx)
        if idx in seen:
            raise _fail(path, i, idx, "index", "a unique index", raw_idx)
        seen.add(idx)
        q = rec["question"]
        if not q.strip():
            raise _fail(path, i, idx, "question", "a non-empty question", q)
        ans = rec["answer"].strip()
        if not ans:
            raise _fail(path, i, idx, "answer", "a non-empty answer", rec["answer"])
        options = {c: rec[c] for c in opt_cols if rec[c].strip()}
        if options and ans not in options:
            raise _fail(path, i, idx, "answer", f"one of the option letters {sorted(options)}", ans)
        ref: Any
        img = rec.get("image", "")
        if img:
            if len(img) <= 64:
                ref = img  # resolved against other rows below
            else:
                where = f"{path}: row {i} (index {idx}): field 'image'"
                data = decode_base64(img, where=where)
                if check_images:
                    check_image_bytes(data, where=where)
                ref = img
                by_index[raw_idx.strip()] = img
        elif rec.get("image_path", ""):
            ref = resolve_path(rec["image_path"], path.parent)
            if check_images and not Path(ref).is_file():
                raise DataError(f"{path}: row {i} (index {idx}): field 'image_path': expected an existing image file, not found: {ref}")
        else:
            raise _fail(path, i, idx, "image", "base64 image data (or an image_path)", img)
        cat = rec.get("category") or None
        extra = {c: rec[c] for c in extra_cols if rec[c] != ""}
        items.append(BenchItem(idx, q, ans, options, cat, extra, ref, i, str(path)))
    for it in items:  # short image values point at another row's image
        if isinstance(it.image_ref, str) and len(it.image_ref) <= 64:
            target = by_index.get(it.image_ref.strip())
            if target is None:
                raise _fail(path, it.row, it.index, "image", "base64 image data or the index of a row with an image",
                            it.image_ref)
            it.image_ref = target
    return items


def write_benchmark_tsv(path: str | Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> int:
    """Write rows as a VLMEvalKit TSV with the given column order (missing values = empty)."""
    rows = list(rows)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, str) and ("\t" in v or "\n" in v):
                raise ValueError(f"TSV field {k!r} contains a tab or newline: {v!r}")
    df = pd.DataFrame([{c: r.get(c, "") for c in columns} for r in rows], columns=list(columns))
    df.to_csv(path, sep="\t", index=False, lineterminator="\n")
    return len(rows)
