"""Benchmarks in VLMEvalKit's TSV layout (VLMEvalKit vlmeval/dataset/image_base.py,
ImageBaseDataset; docs/vlmevalkit.md, "The benchmark TSV layout").

Columns: ``index`` (unique), ``image`` (base64 PNG/JPEG; a value of <= 64 chars is the index of another
row whose image is reused; a Python list literal of base64 strings is a multi-image row, as in
MMMU_DEV_VAL and MMMU_Pro) or ``image_path`` (a path or a list literal of paths), ``question``,
``answer`` (letter for MCQ, Yes/No, or text), option columns ``A``, ``B``, ``C``, ``D``... (empty =
absent), optional ``hint``, ``category``, ``l2-category``, ``split``; any other column is kept in
``BenchItem.extra``.

Rows without an image are dropped, as VLMEvalKit's ``ImageBaseDataset(skip_noimg=True)`` (the default
of its image benchmarks) drops them; ``keep_noimg=True`` keeps them as text-only items (VLMEvalKit's
``skip_noimg=False`` datasets). The indices of dropped rows are reported through ``skipped``.
"""

from __future__ import annotations

import ast
import csv
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from prism_lab.data.images import (
    check_image_bytes,
    decode_base64,
    load_image,
    resolve_path,
)
from prism_lab.data.synth.questions import format_mcq
from prism_lab.errors import DataError

OPTION_LETTERS = tuple(string.ascii_uppercase)
_KNOWN = {"index", "image", "image_path", "question", "answer", "category"}

__all__ = ["BenchItem", "parse_list_literal", "read_benchmark_tsv", "write_benchmark_tsv", "format_mcq",
           "OPTION_LETTERS"]


@dataclass
class BenchItem:
    """One benchmark row. ``image`` decodes lazily (base64 or path), ``prompt`` is the model's user text."""

    index: int | str
    question: str
    answer: str
    options: dict[str, str] = field(default_factory=dict)
    category: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    image_refs: list[Any] = field(default_factory=list)  # base64 strs or Paths, in order; [] = text only
    row: int = 0
    source: str = ""

    @property
    def images(self) -> list[Image.Image]:
        """Every image of the row, in order (empty for a text-only row)."""
        where = f"{self.source}: row {self.row} (index {self.index}): field 'image'"
        return [load_image(ref, where=where if len(self.image_refs) == 1 else f"{where}[{i}]")
                for i, ref in enumerate(self.image_refs)]

    @property
    def image(self) -> Image.Image:
        """The first image (single-image benchmarks)."""
        if not self.image_refs:
            raise DataError(f"{self.source}: row {self.row} (index {self.index}): field 'image': the row has no image")
        return self.images[0]

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


def parse_list_literal(value: str) -> list[str] | None:
    """A VLMEvalKit list cell (``"['a', 'b']"``, read with ``ast.literal_eval``, never ``eval``) -> its strings;
    None when the value is not a list literal; ValueError when it looks like one but is not a list of strings."""
    s = value.strip()
    if not (s.startswith("[") and s.endswith("]")):
        return None
    try:
        v = ast.literal_eval(s)
    except (ValueError, SyntaxError):
        raise ValueError("a list literal of strings") from None
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise ValueError("a non-empty list literal of non-empty strings")
    return v


def _image_refs(path: Path, i: int, idx: Any, rec: dict[str, str], by_index: dict[str, str],
                check_images: bool) -> list[Any]:
    """The row's image references: base64 strings (or a short index pointer, resolved later) or paths."""
    img = rec.get("image", "")
    if img:
        try:
            many = parse_list_literal(img)
        except ValueError as e:
            raise _fail(path, i, idx, "image", str(e), img) from None
        refs = many if many is not None else [img]
        for k, ref in enumerate(refs):
            if len(ref) <= 64 and many is None:
                continue  # the index of another row: resolved once every row is read
            where = f"{path}: row {i} (index {idx}): field 'image'" + ("" if many is None else f"[{k}]")
            data = decode_base64(ref, where=where)
            if check_images:
                check_image_bytes(data, where=where)
        if many is None and len(img) > 64:
            by_index[rec["index"].strip()] = img
        return list(refs)
    raw = rec.get("image_path", "")
    if not raw:
        return []
    try:
        many = parse_list_literal(raw)
    except ValueError as e:
        raise _fail(path, i, idx, "image_path", str(e), raw) from None
    refs = [resolve_path(p, path.parent) for p in (many if many is not None else [raw])]
    for ref in refs:
        if check_images and not Path(ref).is_file():
            raise DataError(f"{path}: row {i} (index {idx}): field 'image_path': expected an existing image file, "
                            f"not found: {ref}")
    return refs


def read_benchmark_tsv(path: str | Path, *, check_images: bool = True, keep_noimg: bool = False,
                       skipped: list[Any] | None = None) -> list[BenchItem]:
    """Read and validate a VLMEvalKit-format TSV; rows are numbered from 0 (the header is not a row).

    Rows without an image are dropped (their indices appended to ``skipped``) unless ``keep_noimg``.
    """
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
    if "image" not in cols and "image_path" not in cols and not keep_noimg:
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
        refs = _image_refs(path, i, idx, rec, by_index, check_images)
        if not refs and not keep_noimg:
            if skipped is not None:
                skipped.append(idx)
            continue
        cat = rec.get("category") or None
        extra = {c: rec[c] for c in extra_cols if rec[c] != ""}
        items.append(BenchItem(idx, q, ans, options, cat, extra, refs, i, str(path)))
    if records and not items:
        raise DataError(f"{path}: field 'image': no row has an image (set keep_noimg: true in the benchmark YAML "
                        f"to evaluate text-only rows)")
    for it in items:  # a short single image value points at another row's image
        if len(it.image_refs) == 1 and isinstance(it.image_refs[0], str) and len(it.image_refs[0]) <= 64:
            target = by_index.get(it.image_refs[0].strip())
            if target is None:
                raise _fail(path, it.row, it.index, "image", "base64 image data or the index of a row with an image",
                            it.image_refs[0])
            it.image_refs = [target]
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
