"""Unit tests of the issue-17 building blocks (the user-level probes are in tests/hostile/)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from PIL import Image

from prism_lab.data.images import MAX_IMAGE_PIXELS, check_image_file, resolve_path
from prism_lab.errors import CheckpointError, ConfigError, DataError
from prism_lab.harness.fingerprint import fingerprint_paths
from prism_lab.harness.ledger import RunRow, run_is_stale
from prism_lab.harness.yamlio import MAX_YAML_VALUES, load_yaml
from prism_lab.models.checkpoint import check_loading_info, inspect_checkpoint, safetensors_header


def _safetensors(path: Path, tensors: dict[str, list[int]]) -> None:
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = 4
        for s in shape:
            n *= s
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header).encode()
    path.write_bytes(len(head).to_bytes(8, "little") + head + b"\0" * offset)


def _config(d: Path, **text) -> None:
    dims = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "vocab_size": 16, **text}
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3_vl", "text_config": dims,
                                               "vision_config": {"depth": 1, "hidden_size": 8}}))


def test_inspect_checkpoint_reads_headers_only(tmp_path):
    _config(tmp_path)
    _safetensors(tmp_path / "model.safetensors", {"a": [2, 3]})
    assert inspect_checkpoint(tmp_path)["model_type"] == "qwen3_vl"
    assert safetensors_header(tmp_path / "model.safetensors")["a"]["shape"] == [2, 3]
    _safetensors(tmp_path / "model.safetensors", {})
    with pytest.raises(CheckpointError, match="hold no tensors"):
        inspect_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        inspect_checkpoint(tmp_path)


def test_inspect_checkpoint_wants_dimensions(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    _safetensors(tmp_path / "model.safetensors", {"a": [1]})
    with pytest.raises(CheckpointError, match=r"text_config\.hidden_size: expected the model's dimensions"):
        inspect_checkpoint(tmp_path)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    _config(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickle weights are never loaded"):
        inspect_checkpoint(tmp_path)


def test_check_loading_info_names_the_first_keys():
    check_loading_info("ck", {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []})
    with pytest.raises(CheckpointError, match=r"ck: .*missing a, b, c, \.\.\. \(4 in all\)"):
        check_loading_info("ck", {"missing_keys": ["d", "c", "b", "a"]})
    with pytest.raises(CheckpointError, match=r"1 mis-shaped \(w: checkpoint \(2, 3\) vs model \(4, 3\)\)"):
        check_loading_info("ck", {"mismatched_keys": [("w", (2, 3), (4, 3))]})


def test_image_paths_stay_inside_their_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    assert resolve_path("sub/x.png", root) == root / "sub" / "x.png"
    for ref in ("../x.png", "sub/../../x.png", "/etc/passwd"):
        with pytest.raises(DataError, match="leads outside its root"):
            resolve_path(ref, root, where="f.json: row 3: field 'images'")
    os.symlink("/etc", root / "link")
    with pytest.raises(DataError, match="leads outside"):
        resolve_path("link/passwd", root)


def test_image_size_is_checked_from_the_header(tmp_path, monkeypatch):
    p = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(p)
    check_image_file(p, where="w")
    monkeypatch.setattr("prism_lab.data.images.MAX_IMAGE_PIXELS", 40 * 30 - 1)
    with pytest.raises(DataError, match=r"w: image file .* is 40 x 30 = 1,200 pixels, more than the limit"):
        check_image_file(p, where="w")
    assert MAX_IMAGE_PIXELS == 50_000_000


def test_fingerprint_follows_contents_and_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_LAB_CACHE_DIR", str(tmp_path / "cache"))
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "a.png").write_bytes(b"one")
    first = fingerprint_paths([d])
    assert fingerprint_paths([d]) == first
    assert (tmp_path / "cache" / "file-digests.sqlite").is_file()
    (d / "a.png").write_bytes(b"two")  # same size, new content
    assert fingerprint_paths([d]) != first
    (d / "a.png").write_bytes(b"one")
    assert fingerprint_paths([d]) == first
    assert fingerprint_paths([tmp_path / "missing"]) != fingerprint_paths([tmp_path / "missing2"])


def test_yaml_expansion_is_bounded(tmp_path):
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for prev, name in zip("abcdef", "bcdefg"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    (tmp_path / "g.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_VALUES:,} values"):
        load_yaml(tmp_path / "g.yaml")


def _row(**kw) -> RunRow:
    base = dict(key="k", kind="eval", label="", config={}, inputs={}, status="running", attempts=1, started_at=0.0,
                finished_at=None, heartbeat_at=None, host=socket.gethostname(), owner_pid=None, pid=None,
                artifact_path=None, log_path=None, error=None)
    base.update(kw)
    return RunRow(**base)


def test_a_claim_of_a_dead_process_is_stale():
    assert run_is_stale(_row(owner_pid=2**22 + 12345))
    assert not run_is_stale(_row(owner_pid=os.getpid()))
    assert run_is_stale(_row(host="elsewhere", heartbeat_at=0.0))
