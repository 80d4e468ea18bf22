"""Image encode/decode helpers shared by every reader and writer.

``load_image`` accepts every form an image takes in the PRISM/verl/LLaMA-Factory/VLMEvalKit schemas:
a file path, raw bytes, the HF ``datasets.Image`` struct ``{"bytes": ..., "path": ...}``, a base64
string, or an already decoded PIL image. It always returns an RGB PIL image.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from prism_lab.errors import DataError

ImageRef = Any  # str | Path | bytes | dict | PIL.Image.Image

#: Fixed PNG options: the same pixels always give the same bytes (no timestamps, no text chunks).
_PNG_OPTS = {"format": "PNG", "optimize": False, "compress_level": 6}

_B64_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n\r")


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of ``img`` (converted to RGB), deterministic."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, **_PNG_OPTS)
    return buf.getvalue()


def png_to_base64(data: bytes) -> str:
    """Base64 text (no newlines) of encoded image bytes, as VLMEvalKit TSVs store it."""
    return base64.b64encode(data).decode("ascii")


def image_to_base64(img: Image.Image) -> str:
    return png_to_base64(encode_png(img))


def decode_base64(text: str, *, where: str = "image") -> bytes:
    """Strict base64 decode; raises DataError naming ``where`` on bad input."""
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{where}: expected base64-encoded image data, got invalid base64 ({e})") from None


#: Most pixels an image may have. The header says the size before anything is decoded, so a small file
#: that would decode to gigabytes (a "decompression bomb") is refused up front. 50 M pixels is a 7K x 7K
#: photo; Qwen3-VL's processor downsizes far below that anyway.
MAX_IMAGE_PIXELS = 50_000_000


def _check_size(im: Image.Image, where: str, what: str) -> None:
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"{where}: {what} is {w} x {h} = {w * h:,} pixels, more than the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (a decompression bomb, or an image to downsize first)")


def _open(src: Any) -> Image.Image:
    """Image.open without PIL's bomb warning: the size is checked against MAX_IMAGE_PIXELS right after."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(src)


def _check_opened(open_it: Any, where: str, what: str) -> None:
    try:
        with open_it() as im:
            _check_size(im, where, what)
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: {what} is not a readable image ({e})") from None


def check_image_bytes(data: bytes, *, where: str = "image") -> None:
    """Cheap validity check: PIL identifies the format and the size is within MAX_IMAGE_PIXELS (header
    and chunk checksums only, no full decode)."""
    _check_opened(lambda: _open(io.BytesIO(data)), where, "the image data")


def check_image_file(path: Path, *, where: str = "image") -> None:
    """The file exists and passes the same checks as :func:`check_image_bytes`."""
    if not _is_file(path):
        raise DataError(f"{where}: expected an existing image file, not found: {path}")
    _check_opened(lambda: _open(path), where, f"image file {path}")


def looks_like_base64(text: str) -> bool:
    """Heuristic used to tell a base64 payload from a file path."""
    return len(text) > 64 and set(text[:256]) <= _B64_CHARS


def resolve_path(ref: str | Path, base_dir: str | Path | None, *, where: str = "image") -> Path:
    """``ref`` joined to ``base_dir`` (its root), which it must stay inside: a row naming
    ``../../etc/passwd`` or an absolute path elsewhere is a DataError, never a file that is read."""
    p = Path(ref).expanduser()
    if base_dir is None:
        return p
    if not p.is_absolute():
        p = Path(base_dir) / p
    root = os.path.realpath(base_dir)
    if os.path.commonpath([root, os.path.realpath(p)]) != root:
        raise DataError(f"{where}: image path {str(ref)[:120]!r} leads outside its root directory {root}")
    return p


def _open_bytes(data: bytes, where: str) -> Image.Image:
    try:
        with _open(io.BytesIO(data)) as im:
            _check_size(im, where, "the image data")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: expected encoded image bytes, could not be decoded ({e})") from None


def _open_path(p: Path, where: str) -> Image.Image:
    if not p.is_file():
        raise DataError(f"{where}: image file not found: {p}")
    try:
        with _open(p) as im:
            _check_size(im, where, f"image file {p}")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: image file {p} could not be decoded ({e})") from None


def _is_file(p: Path) -> bool:
    """Path.is_file that says False for strings too long to be a file name (base64 images)."""
    try:
        return p.is_file()
    except OSError:
        return False


def load_image(ref: ImageRef, *, base_dir: str | Path | None = None, where: str = "image") -> Image.Image:
    """Decode any supported image reference to an RGB PIL image.

    ``ref`` may be a PIL image, a path (str/Path; relative paths are joined with ``base_dir``), raw
    encoded bytes, a ``{"bytes": ..., "path": ...}`` dict (bytes win when present), or base64 text.
    Failures raise DataError whose message starts with ``where``.
    """
    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, (bytes, bytearray, memoryview)):
        return _open_bytes(bytes(ref), where)
    if isinstance(ref, dict):
        data, path = ref.get("bytes"), ref.get("path")
        if data:
            return _open_bytes(bytes(data), where)
        if path:
            return _open_path(resolve_path(path, base_dir, where=where), where)
        raise DataError(f"{where}: image struct has neither 'bytes' nor 'path'")
    if isinstance(ref, Path):
        return _open_path(resolve_path(ref, base_dir, where=where), where)
    if isinstance(ref, str):
        if ref.startswith(("http://", "https://")):
            raise DataError(f"{where}: image URLs are not supported offline ({ref[:80]}); download it first")
        p = None
        if len(ref) < 4096:
            try:
                p = resolve_path(ref, base_dir, where=where)
            except DataError:
                if not looks_like_base64(ref):  # base64 text may start with "/" (JPEG: "/9j/")
                    raise
        if p is not None and _is_file(p):
            return _open_path(p, where)
        if looks_like_base64(ref):
            return _open_bytes(decode_base64(ref, where=where), where)
        raise DataError(f"{where}: image file not found: {p}")
    raise DataError(
        f"{where}: expected an image path, bytes, {{'bytes','path'}} dict or base64 string, got {type(ref).__name__}"
    )
