"""Issue 29, failure 9 (second half): `sweep plan --resources` reads each local model's config.json; one it
cannot use (not JSON, not UTF-8, not a Qwen3-VL config) is one line naming the grid field and the file."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.hostile.conftest import assert_user_error, snapshot

BAD_CONFIGS = {
    "garbage": b"{this is not json",
    "not-utf8": b"\xff\xfe\x00garbage",
    "llama": json.dumps({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "vocab_size": 512}).encode(),
}


def bad_config_checkpoint(session, dst, how: str):
    shutil.copytree(session.checkpoint, dst)
    (dst / "config.json").write_bytes(BAD_CONFIGS[how])
    return dst


# ---- failure 9: `sweep plan --resources` with a local config.json it cannot use ------------------------
@pytest.mark.parametrize("how", sorted(BAD_CONFIGS))
def test_plan_resources_refuses_a_bad_local_config(session, ws, how):
    bad_config_checkpoint(session, ws.dir / f"ckpt-{how}", how)
    grid = ws.grid(models={"4b": f"ckpt-{how}"})
    assert_user_error(ws.plan(grid, "--resources", timeout=300), "probe.yaml", "models.4b", "config.json")
    assert snapshot(ws.root) is None
