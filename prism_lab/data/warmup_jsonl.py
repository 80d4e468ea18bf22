"""Discriminator warmup pairs: JSON lines (docs/prism_method.md §5.1).

Each line: ``{"prompt" (or "question"): str, "image": str (optional path; relative paths are joined
with ``image_root``, else the file's directory), "teacher_caption", "student_caption", "teacher_cot",
"student_cot": str}``. A line with caption/cot fields must have all four non-empty, otherwise it is
skipped and counted (as the upstream warm-up script does). The legacy form ``teacher_response``/``student_response``
gives one whole-response comparison. Each valid caption/cot line expands into two comparison samples,
``kind="caption"`` and ``kind="cot"``. Anything else malformed (bad JSON, wrong types, missing prompt,
missing image file) is a DataError naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from prism_lab.data.images import check_image_file, load_image, resolve_path
from prism_lab.errors import DataError

SEGMENT_FIELDS = ("teacher_caption", "student_caption", "teacher_cot", "student_cot")
LEGACY_FIELDS = ("teacher_response", "student_response")


@dataclass
class WarmupPair:
    """One comparison: the discriminator should score ``teacher`` above ``student``."""

    kind: str  # "caption" | "cot" | "response" (legacy)
    prompt: str
    image: Path | None
    teacher: str
    student: str
    line: int
    source: str = ""

    def load_image(self) -> Image.Image | None:
        if self.image is None:
            return None
        return load_image(self.image, where=f"{self.source}: line {self.line}: field 'image'")


def _fail(path: Path, line: int, fld: str, expected: str, got: Any) -> DataError:
    r = repr(got)
    if len(r) > 60:
        r = r[:57] + "..."
    return DataError(f"{path}: line {line}: field '{fld}': expected {expected}, got {r}")


def read_warmup_jsonl(
    path: str | Path, image_root: str | Path | None = None, *, check_images: bool = True
) -> tuple[list[WarmupPair], int]:
    """Read warmup pairs; returns (comparison samples, number of skipped lines). Line numbers are 1-based."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: warmup data file not found")
    base = Path(image_root) if image_root is not None else path.parent
    pairs: list[WarmupPair] = []
    skipped = 0
    with path.open(encoding="utf-8") as fh:
        for ln, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {ln}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise _fail(path, ln, "<line>", "a JSON object", obj)
            key = "prompt" if "prompt" in obj else "question"
            prompt = obj.get(key)
            if not isinstance(prompt, str) or not prompt.strip():
                raise _fail(path, ln, "prompt", "a non-empty string (or 'question')", prompt)
            img = obj.get("image")
            img_path: Path | None = None
            if img is not None and img != "":
                if not isinstance(img, str):
                    raise _fail(path, ln, "image", "an image path (string)", img)
                if img.startswith(("http://", "https://")):
                    raise _fail(path, ln, "image", "a local path (URLs are not fetched offline)", img)
                where = f"{path}: line {ln}: field 'image'"
                img_path = resolve_path(img, base, where=where)
                if check_images:
                    check_image_file(img_path, where=where)
            for fld in (*SEGMENT_FIELDS, *LEGACY_FIELDS):
                v = obj.get(fld)
                if v is not None and not isinstance(v, str):
                    raise _fail(path, ln, fld, "a string", v)
            if any(f in obj for f in SEGMENT_FIELDS):
                if not all(isinstance(obj.get(f), str) and obj[f].strip() for f in SEGMENT_FIELDS):
                    skipped += 1
                    continue
                for kind in ("caption", "cot"):
                    pairs.append(
                        WarmupPair(kind, prompt, img_path, obj[f"teacher_{kind}"], obj[f"student_{kind}"], ln, str(path))
                    )
            elif any(f in obj for f in LEGACY_FIELDS):
                if not all(isinstance(obj.get(f), str) and obj[f].strip() for f in LEGACY_FIELDS):
                    skipped += 1
                    continue
                pairs.append(
                    WarmupPair("response", prompt, img_path, obj["teacher_response"], obj["student_response"], ln, str(path))
                )
            else:
                raise _fail(
                    path, ln, "teacher_caption",
                    "caption/cot fields (teacher_caption, student_caption, teacher_cot, student_cot) "
                    "or legacy teacher_response/student_response", "missing",
                )
    return pairs, skipped


def write_warmup_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """One sorted-key JSON object per line; returns the line count."""
    n = 0
    with Path(path).open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
            n += 1
    return n
