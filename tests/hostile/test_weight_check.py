"""Issue 29, "What to build" item 2: the strict weight check reads the safetensors headers and builds the model
on the meta device, so it depends on no loader feature (transformers 5.25's hub kernels refused every
checkpoint through `from_pretrained(device_map="meta")`), and a failure that is not about the weights says so."""

from __future__ import annotations

import json
import shutil

from tests.hostile.conftest import assert_user_error, cli, snapshot


def test_a_checkpoint_prism_lab_wrote_passes_the_check(session, ws):
    shutil.copytree(session.checkpoint, ws.dir / "ckpt")
    res = ws.plan(ws.grid(models={"4b": "ckpt"}))
    assert res.returncode == 0, res.stderr[-3000:]
    assert snapshot(ws.root) is None


def test_a_config_transformers_refuses_is_not_blamed_on_the_weights(session, ws):
    ckpt = ws.dir / "ckpt-act"
    shutil.copytree(session.checkpoint, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"]["hidden_act"] = "no-such-activation"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    res = cli("eval", ckpt, "-b", "synth-reasoning", "--bench-dir", ws.data / "bench", "--root", ws.root,
              "--limit", "2", cwd=ws.dir, timeout=300)
    line = assert_user_error(res, "could not check the weights", "config.json", "no-such-activation")
    assert "do not fit" not in line
    assert snapshot(ws.root) is None
