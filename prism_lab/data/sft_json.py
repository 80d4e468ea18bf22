"""ShareGPT multimodal SFT data (LLaMA-Factory style), the format of the PRISM SFT mixture.

A JSON list of rows ``{"messages": [{"role": "system"?, "content": ...}, {"role": "user", "content":
"<image>question"}, {"role": "assistant", "content": response}], "images": ["images/x.png"]}``.
The LLaMA-Factory ``conversations`` form (``{"from": "human"|"gpt"|"system", "value": ...}``) is read
too. Extra keys (e.g. ``meta``) are kept but not interpreted. Relative image paths are resolved against
``image_root`` when given (LLaMA-Factory's ``media_dir``), else against the JSON file's directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from prism_lab.data.images import check_image_file, load_image, resolve_path
from prism_lab.errors import DataError

IMAGE_TOKEN = "<image>"
_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass
class SFTExample:
    """One SFT conversation. ``images`` are resolved absolute paths, loaded on demand by ``load_images``."""

    messages: list[dict[str, str]]
    images: list[Path]
    image_root: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    row: int = 0
    source: str = ""

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Every message before the final assistant turn (system?, user, ...)."""
        return self.messages[:-1]

    @property
    def response(self) -> str:
        """The final assistant turn (the SFT target)."""
        return self.messages[-1]["content"]

    @property
    def system(self) -> str | None:
        return next((m["content"] for m in self.messages if m["role"] == "system"), None)

    def load_images(self) -> list[Image.Image]:
        where = f"{self.source}: row {self.row}: field 'images'"
        return [load_image(p, where=where) for p in self.images]


def _fail(path: Path, row: int, fld: str, expected: str, got: Any = None) -> DataError:
    tail = "" if got is None else f", got {_short(got)}"
    return DataError(f"{path}: row {row}: field '{fld}': expected {expected}{tail}")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _messages(path: Path, i: int, row: dict) -> list[dict[str, str]]:
    if "messages" in row:
        raw, rk, ck, fld = row["messages"], "role", "content", "messages"
    elif "conversations" in row:
        raw, rk, ck, fld = row["conversations"], "from", "value", "conversations"
    else:
        raise _fail(path, i, "messages", "a list of {role, content} messages (or 'conversations')", "missing")
    if not isinstance(raw, list) or not raw:
        raise _fail(path, i, fld, "a non-empty list of messages", raw)
    out = []
    for j, m in enumerate(raw):
        if not isinstance(m, dict):
            raise _fail(path, i, f"{fld}[{j}]", f"an object with '{rk}' and '{ck}'", m)
        role = _ROLE_ALIASES.get(m.get(rk)) if isinstance(m.get(rk), str) else None
        if role is None:
            raise _fail(path, i, f"{fld}[{j}].{rk}", "one of system/user/assistant (human/gpt)", m.get(rk))
        content = m.get(ck)
        if not isinstance(content, str):
            raise _fail(path, i, f"{fld}[{j}].{ck}", "a string", content)
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out]
    if "user" not in roles:
        raise _fail(path, i, fld, "a user turn", roles)
    if roles[-1] != "assistant":
        raise _fail(path, i, fld, "an assistant turn last", roles)
    if not out[-1]["content"].strip():
        raise _fail(path, i, f"{fld}[{len(out) - 1}].{ck}", "a non-empty assistant response", "''")
    return out


def read_sft_json(path: str | Path, *, image_root: str | Path | None = None, check_images: bool = True) -> list[SFTExample]:
    """Read and validate a ShareGPT multimodal SFT JSON file (a list, or JSON lines with ``.jsonl``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: SFT data file not found")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    base = Path(image_root) if image_root is not None else path.parent
    out = []
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise _fail(path, i, "<row>", "an object", row)
        msgs = _messages(path, i, row)
        imgs = row.get("images", [])
        if imgs is None:
            imgs = []
        if isinstance(imgs, str):
            imgs = [imgs]
        if not isinstance(imgs, list) or not all(isinstance(p, str) and p for p in imgs):
            raise _fail(path, i, "images", "a list of image paths (strings)", imgs)
        n_tok = sum(m["content"].count(IMAGE_TOKEN) for m in msgs)
        if n_tok != len(imgs):
            raise _fail(path, i, "images", f"as many images as '{IMAGE_TOKEN}' placeholders ({n_tok})", len(imgs))
        where = f"{path}: row {i}: field 'images'"
        paths = [resolve_path(p, base, where=where) for p in imgs]
        if check_images:
            for p in paths:
                check_image_file(p, where=where)
        meta = row.get("meta", {})
        if not isinstance(meta, dict):
            raise _fail(path, i, "meta", "an object", meta)
        out.append(SFTExample(msgs, paths, Path(image_root) if image_root else None, meta, i, str(path)))
    return out


def write_sft_json(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write rows deterministically (sorted keys, fixed indentation); returns the row count."""
    rows = list(rows)
    Path(path).write_text(json.dumps(rows, sort_keys=True, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return len(rows)
