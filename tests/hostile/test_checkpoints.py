"""Issue 17 items 1, 4 (bad checkpoints) and 6 (size-less model configs): a checkpoint whose weights
do not fit its model is refused with one line naming the checkpoint, never loaded as a random init."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.hostile.conftest import Workspace, assert_user_error, cli, snapshot


# ---- safetensors files, written by hand (header length, JSON header, raw bytes) -------------------
def read_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def write_tensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    header: dict = {"__metadata__": {"format": "pt"}}
    chunks, offset = [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(chunks))


def bad_checkpoint(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    st = dst / "model.safetensors"
    tensors = read_tensors(st)
    if how == "empty":
        write_tensors(st, {})
    elif how == "renamed":
        write_tensors(st, {f"renamed.{k}": v for k, v in tensors.items()})
    elif how == "misshaped":
        name = next(k for k, (_, shape, _) in tensors.items() if len(shape) == 2 and shape[0] > 1)
        dtype, shape, raw = tensors[name]
        half = shape[0] // 2
        tensors[name] = (dtype, [half, shape[1]], raw[: len(raw) * half // shape[0]])
        write_tensors(st, tensors)
    elif how == "pickle-only":
        st.unlink()
        (dst / "pytorch_model.bin").write_bytes(b"\x80\x04garbage")
    elif how == "garbage-config":
        (dst / "config.json").write_text("{this is not json")
    elif how == "sizeless-config":
        (dst / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    else:
        raise ValueError(how)
    return dst


def run_eval(ws: Workspace, ckpt: Path, **kw):
    return cli("eval", ckpt, "-b", "synth-reasoning", "--bench-dir", ws.data / "bench", "--root", ws.root,
               "--limit", "2", "--max-new-tokens", "4", cwd=ws.dir, timeout=300, **kw)


# ---- item 1: silent random init --------------------------------------------------------------------
@pytest.mark.parametrize("how,needle", [("empty", "no tensors"), ("renamed", "missing"), ("misshaped", "shape")])
def test_eval_refuses_weights_that_do_not_fit(session, ws, how, needle):
    ckpt = bad_checkpoint(session.checkpoint, ws.dir / f"ckpt-{how}", how)
    res = run_eval(ws, ckpt, mem_gb=8)
    assert_user_error(res, f"ckpt-{how}", needle)
    assert snapshot(ws.root) is None


def test_sft_never_starts_from_a_checkpoint_without_tensors(session, ws):
    ckpt = bad_checkpoint(session.checkpoint, ws.dir / "ckpt-empty", "empty")
    grid = ws.grid(models={"4b": "ckpt-empty"})
    assert_user_error(ws.plan(grid), "probe.yaml", "models.4b")
    res = ws.run(grid, "--stages", "sft", timeout=300, mem_gb=8)
    assert_user_error(res, "probe.yaml", "models.4b")
    assert snapshot(ws.root) is None


# ---- item 4: model directories that used to pass `plan`, and tracebacks before the message -----------
@pytest.mark.parametrize("how", ["pickle-only", "garbage-config", "empty"])
def test_plan_checks_model_directories(session, ws, how):
    bad_checkpoint(session.checkpoint, ws.dir / f"ckpt-{how}", how)
    grid = ws.grid(models={"4b": f"ckpt-{how}"})
    assert_user_error(ws.plan(grid), "probe.yaml", "models.4b")
    assert snapshot(ws.root) is None


def test_eval_of_a_garbage_config_is_one_line(session, ws):
    ckpt = bad_checkpoint(session.checkpoint, ws.dir / "ckpt-garbage", "garbage-config")
    assert_user_error(run_eval(ws, ckpt), "config.json")
    assert snapshot(ws.root) is None


# ---- item 6: a config without dimensions must not build a full-size model ----------------------------
def test_plan_refuses_a_sizeless_model_config(session, ws):
    bad_checkpoint(session.checkpoint, ws.dir / "ckpt-sizeless", "sizeless-config")
    grid = ws.grid(models={"4b": "ckpt-sizeless"})
    assert_user_error(ws.plan(grid), "probe.yaml", "models.4b")


def test_eval_refuses_a_sizeless_model_config(session, ws):
    ckpt = bad_checkpoint(session.checkpoint, ws.dir / "ckpt-sizeless", "sizeless-config")
    res = run_eval(ws, ckpt, mem_gb=8)  # unfixed, this builds a ~22 GB model: capped so it cannot
    assert_user_error(res, "config.json")
    assert snapshot(ws.root) is None
