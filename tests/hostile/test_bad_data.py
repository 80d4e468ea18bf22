"""Issue 17 items 4 and 8: every corrupt dataset is one line naming the file and the field, caught by
`sweep plan` and again by `sweep run` before any stage starts, with nothing written; image paths stay
inside their root."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.hostile.conftest import assert_user_error, snapshot


def bomb_png(side: int = 12000) -> bytes:
    """A ~20 KB PNG of side x side 1-bit pixels: 144 M pixels, 432 MB once decoded to RGB (PIL only
    warns below 178 M pixels)."""
    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    raw = (b"\x00" * (1 + (side + 7) // 8)) * side
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _sft_rows(data: Path) -> list[dict]:
    return json.loads((data / "sft_public.json").read_text())


def _edit_sft(data: Path, fn: Callable[[dict], None]) -> None:
    rows = _sft_rows(data)
    fn(rows[0])
    (data / "sft_public.json").write_text(json.dumps(rows))


def _first_sft_image(data: Path) -> Path:
    return data / _sft_rows(data)[0]["images"][0]


def _edit_rl(data: Path, fn: Callable[[pa.Table], pa.Table]) -> None:
    path = data / "rl_train.parquet"
    pq.write_table(fn(pq.read_table(path)), path)


def _rl_bomb(table: pa.Table) -> pa.Table:
    rows = table.to_pylist()
    rows[0]["images"] = [{"bytes": bomb_png(), "path": None}]
    return pa.Table.from_pylist(rows, schema=table.schema)


def _rl_int_prompt(table: pa.Table) -> pa.Table:
    i = table.schema.get_field_index("prompt")
    return table.set_column(i, "prompt", pa.array(range(table.num_rows), pa.int64()))


def _outside_image(data: Path) -> str:
    shutil.copy(_first_sft_image(data), data.parent / "outside.png")
    return "../outside.png"  # a valid image, one level above image_root


def _warmup_first_image(data: Path) -> Path:
    return data / json.loads((data / "warmup_pairs.jsonl").read_text().splitlines()[0])["image"]


#: name -> (corruption of the workspace's data directory, needles the error line must contain)
CORRUPTIONS: dict[str, tuple[Callable[[Path], object], tuple[str, ...]]] = {
    "sft-truncated-json": (lambda d: (d / "sft_public.json").write_text((d / "sft_public.json").read_text()[:200]),
                           ("sft_public.json",)),
    "sft-row-without-messages": (lambda d: _edit_sft(d, lambda r: r.pop("messages")), ("sft_public.json", "messages")),
    "sft-missing-image": (lambda d: _first_sft_image(d).unlink(), ("sft_public.json", "images")),
    "sft-zero-byte-image": (lambda d: _first_sft_image(d).write_bytes(b""), ("sft_public.json", "images")),
    "sft-text-image": (lambda d: _first_sft_image(d).write_text("not an image\n"), ("sft_public.json", "images")),
    "sft-bomb-image": (lambda d: _first_sft_image(d).write_bytes(bomb_png()), ("sft_public.json", "images")),
    "sft-image-path-traversal": (lambda d: _edit_sft(d, lambda r: r.update(images=["../../../../etc/passwd"])),
                                 ("sft_public.json", "images")),
    "sft-image-outside-root": (lambda d: _edit_sft(d, lambda r: r.update(images=[_outside_image(d)])),
                               ("sft_public.json", "images")),
    "rl-wrong-type": (lambda d: _edit_rl(d, _rl_int_prompt), ("rl_train.parquet", "prompt")),
    "rl-bomb-image": (lambda d: _edit_rl(d, _rl_bomb), ("rl_train.parquet", "row 0", "images")),
    "warmup-bad-json-line": (lambda d: (d / "warmup_pairs.jsonl").open("a").write("{not json\n"),
                             ("warmup_pairs.jsonl", "line 5")),
    "warmup-missing-image": (lambda d: _warmup_first_image(d).unlink(), ("warmup_pairs.jsonl", "image")),
    "missing-sft-file": (lambda d: (d / "sft_public.json").unlink(), ("probe.yaml", "data.local.sft")),
    "missing-rl-file": (lambda d: (d / "rl_train.parquet").unlink(), ("probe.yaml", "data.local.rl")),
    "missing-benchmark-tsv": (lambda d: (d / "bench" / "synth-reasoning.tsv").unlink(), ("synth-reasoning.tsv",)),
    "garbage-benchmark-tsv": (lambda d: (d / "bench" / "synth-reasoning.tsv").write_text("a\tb\n1\t2\n"),
                              ("synth-reasoning.tsv",)),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_plan_refuses_corrupt_data(ws, name):
    corrupt, needles = CORRUPTIONS[name]
    corrupt(ws.data)
    assert_user_error(ws.plan(ws.local_grid()), *needles)
    assert snapshot(ws.root) is None


@pytest.mark.parametrize("name", ["sft-row-without-messages", "sft-image-path-traversal", "warmup-bad-json-line",
                                  "rl-bomb-image"])
def test_run_refuses_corrupt_data_before_any_stage(ws, name):
    corrupt, needles = CORRUPTIONS[name]
    corrupt(ws.data)
    res = ws.run(ws.local_grid(), "--stages", "data", timeout=300, mem_gb=8)
    assert_user_error(res, *needles)
    assert snapshot(ws.root) is None


def test_run_refuses_a_bad_rl_parquet_before_sft_trains(ws):
    _edit_rl(ws.data, _rl_int_prompt)
    res = ws.run(ws.local_grid(), timeout=600, mem_gb=8)
    assert_user_error(res, "rl_train.parquet", "prompt")
    assert snapshot(ws.root) is None


def test_run_checks_again_after_plan(ws):
    """Data that was fine at `plan` time and broken since is still refused by `run`."""
    grid = ws.local_grid()
    assert ws.plan(grid).returncode == 0
    _first_sft_image(ws.data).write_bytes(b"")
    assert_user_error(ws.run(grid, "--stages", "data", timeout=300), "sft_public.json", "images")
    assert snapshot(ws.root) is None
