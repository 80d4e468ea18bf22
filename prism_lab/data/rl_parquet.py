"""RL parquet: the verl RLHF schema plus PRISM's teacher fields (docs/prism_method.md §6.1).

Columns: ``data_source`` (str), ``prompt`` (list of {role, content}; ``<image>`` placeholders in the
user text), ``images`` (list of the HF ``datasets.Image`` struct {bytes, path}), ``reward_model``
{ground_truth, equivalent_answers}, ``extra_info`` {index, family, split, ...}, ``teacher_caption``
(str, caption block with tags) and ``teacher_cot`` (str, think + answer blocks).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from prism_lab.data.images import check_image_bytes, check_image_file, load_image, resolve_path
from prism_lab.errors import DataError

IMAGE_TOKEN = "<image>"
REQUIRED_COLUMNS = ("prompt", "reward_model")

#: The schema the generator writes (readers accept any compatible schema).
RL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("equivalent_answers", pa.list_(pa.string()))])),
        (
            "extra_info",
            pa.struct(
                [
                    ("index", pa.int64()),
                    ("family", pa.string()),
                    ("split", pa.string()),
                    ("item_id", pa.string()),
                    ("difficulty", pa.string()),
                    ("meta", pa.string()),
                ]
            ),
        ),
        ("teacher_caption", pa.string()),
        ("teacher_cot", pa.string()),
    ]
)


@dataclass
class RLExample:
    """One RL prompt with its verifiable answer and (optionally) the teacher's caption/cot segments.

    ``images`` holds raw references (bytes or resolved paths); ``load_images`` decodes them to RGB.
    """

    index: int
    data_source: str
    prompt: list[dict[str, str]]
    images: list[Any]
    ground_truth: str
    equivalent_answers: list[str]
    teacher_caption: str | None = None
    teacher_cot: str | None = None
    family: str | None = None
    extra_info: dict[str, Any] = field(default_factory=dict)
    row: int = 0
    source: str = ""

    def load_images(self) -> list[Image.Image]:
        where = f"{self.source}: row {self.row}: field 'images'"
        return [load_image(r, where=where) for r in self.images]

    @property
    def meta(self) -> dict[str, Any]:
        """Generator metadata (scene and question terms) when present in extra_info.meta."""
        m = self.extra_info.get("meta")
        if isinstance(m, str) and m:
            return json.loads(m)
        return m if isinstance(m, dict) else {}


def _fail(path: Path, row: int, fld: str, expected: str, got: Any = "missing") -> DataError:
    r = repr(got) if not isinstance(got, str) or got != "missing" else "missing"
    if len(r) > 60:
        r = r[:57] + "..."
    return DataError(f"{path}: row {row}: field '{fld}': expected {expected}, got {r}")


def _answer_str(v: Any) -> str | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return str(v)
    return None


def _parse_row(path: Path, i: int, row: dict[str, Any], require_teacher: bool, base: Path) -> RLExample:
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise _fail(path, i, "prompt", "a non-empty list of {role, content} messages", prompt if "prompt" in row else "missing")
    msgs = []
    for j, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise _fail(path, i, f"prompt[{j}]", "a {role: str, content: str} message", m)
        msgs.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "user" for m in msgs):
        raise _fail(path, i, "prompt", "a user message", [m["role"] for m in msgs])

    raw_imgs = row.get("images")
    if raw_imgs is None:
        raw_imgs = []
    if not isinstance(raw_imgs, list):
        raise _fail(path, i, "images", "a list of {bytes, path} image structs", raw_imgs)
    refs: list[Any] = []
    for j, im in enumerate(raw_imgs):
        where = f"{path}: row {i}: field 'images[{j}]'"
        if isinstance(im, dict):
            data, p = im.get("bytes"), im.get("path")
            if data:
                check_image_bytes(bytes(data), where=where)
                refs.append(bytes(data))
                continue
            if isinstance(p, str) and p:
                im = p
            else:
                raise _fail(path, i, f"images[{j}]", "an image struct with non-empty 'bytes' or 'path'", "empty")
        if isinstance(im, (bytes, bytearray)):
            check_image_bytes(bytes(im), where=where)
            refs.append(bytes(im))
        elif isinstance(im, str):
            rp = resolve_path(im, base, where=where)
            check_image_file(rp, where=where)
            refs.append(rp)
        else:
            raise _fail(path, i, f"images[{j}]", "image bytes, a path or a {bytes, path} struct", type(im).__name__)
    n_tok = sum(m["content"].count(IMAGE_TOKEN) for m in msgs)
    if n_tok != len(refs):
        raise _fail(path, i, "images", f"as many images as '{IMAGE_TOKEN}' placeholders ({n_tok})", len(refs))

    rm = row.get("reward_model")
    if not isinstance(rm, dict):
        raise _fail(path, i, "reward_model", "a struct with 'ground_truth'", rm if "reward_model" in row else "missing")
    gt = _answer_str(rm.get("ground_truth"))
    if gt is None or not gt.strip():
        raise _fail(path, i, "reward_model.ground_truth", "a non-empty string", rm.get("ground_truth"))
    eq = rm.get("equivalent_answers") or []
    if not isinstance(eq, list) or any(_answer_str(e) is None for e in eq):
        raise _fail(path, i, "reward_model.equivalent_answers", "a list of strings", eq)

    extra = row.get("extra_info") or {}
    if not isinstance(extra, dict):
        raise _fail(path, i, "extra_info", "a struct", extra)
    index = extra.get("index", i)
    if isinstance(index, bool) or not isinstance(index, int):
        raise _fail(path, i, "extra_info.index", "an integer", index)
    ds = row.get("data_source", "")
    if ds is None:
        ds = ""
    if not isinstance(ds, str):
        raise _fail(path, i, "data_source", "a string", ds)

    teacher: dict[str, str | None] = {}
    for fld in ("teacher_caption", "teacher_cot"):
        v = row.get(fld)
        if v is not None and not isinstance(v, str):
            raise _fail(path, i, fld, "a string", v)
        if require_teacher and (v is None or not v.strip()):
            raise _fail(path, i, fld, "a non-empty teacher segment (require_teacher=True)",
                        "missing" if fld not in row else v)
        teacher[fld] = v
    family = extra.get("family")
    return RLExample(
        index=index,
        data_source=ds,
        prompt=msgs,
        images=refs,
        ground_truth=gt,
        equivalent_answers=[_answer_str(e) for e in eq],  # type: ignore[misc]
        teacher_caption=teacher["teacher_caption"],
        teacher_cot=teacher["teacher_cot"],
        family=family if isinstance(family, str) else None,
        extra_info=dict(extra),
        row=i,
        source=str(path),
    )


def read_rl_parquet(
    path: str | Path, *, require_teacher: bool = False, image_root: str | Path | None = None
) -> list[RLExample]:
    """Read and validate an RL parquet. ``require_teacher``: teacher_caption/teacher_cot must be non-empty."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: RL parquet not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    for col in REQUIRED_COLUMNS:
        if col not in table.column_names:
            raise DataError(f"{path}: missing column '{col}' (have: {', '.join(table.column_names)})")
    if require_teacher:
        for col in ("teacher_caption", "teacher_cot"):
            if col not in table.column_names:
                raise DataError(f"{path}: missing column '{col}' (required by require_teacher=True)")
    base = Path(image_root) if image_root is not None else path.parent
    return [_parse_row(path, i, row, require_teacher, base) for i, row in enumerate(table.to_pylist())]


def write_rl_parquet(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows with ``RL_SCHEMA`` deterministically (no pandas metadata); returns the row count."""
    rows = list(rows)
    table = pa.Table.from_pylist(rows, schema=RL_SCHEMA)
    pq.write_table(table, path, compression="zstd", use_dictionary=True, write_statistics=False, row_group_size=1024)
    return len(rows)
