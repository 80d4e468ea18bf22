"""Issue 29, failure 10 (first part): `disc_warmup.discriminator.base` is a local checkpoint like the grid's
models: checked by `plan` and `run` before anything runs, and resolved against the grid file's directory."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.hostile.conftest import assert_user_error, snapshot


def garbage_config_checkpoint(session, dst):
    shutil.copytree(session.checkpoint, dst)
    (dst / "config.json").write_text("{this is not json")
    return dst


# ---- failure 10: discriminator.base ----------------------------------------------------------------
def disc_grid(ws, base: str, filename: str = "probe.yaml"):
    return ws.grid(filename, stages={"disc_warmup": {"discriminator": {"base": base}}})


@pytest.mark.parametrize("base", ["./no-such-dir", "not-a-preset-or-hub-id", "tiny-xs"])
def test_plan_and_run_refuse_a_missing_discriminator_base(ws, base):
    grid = disc_grid(ws, base)
    assert_user_error(ws.plan(grid), "probe.yaml", "stages.disc_warmup.discriminator.base")
    assert_user_error(ws.run(grid, timeout=300), "probe.yaml", "stages.disc_warmup.discriminator.base")
    assert snapshot(ws.root) is None


def test_plan_and_run_check_the_discriminator_base_checkpoint(session, ws):
    garbage_config_checkpoint(session, ws.dir / "ckpt-garbage")
    grid = disc_grid(ws, "ckpt-garbage")
    assert_user_error(ws.plan(grid), "stages.disc_warmup.discriminator.base", "config.json")
    assert_user_error(ws.run(grid, timeout=300), "stages.disc_warmup.discriminator.base", "config.json")
    assert snapshot(ws.root) is None


def test_resources_resolves_the_discriminator_base_against_the_grid_file(session, ws):
    shutil.copytree(session.checkpoint, ws.dir / "grids" / "ckpt")
    grid = disc_grid(ws, "ckpt", filename="grids/probe.yaml")
    shutil.copy(ws.dir / "base.yaml", ws.dir / "grids" / "base.yaml")
    shutil.copy(ws.dir / "smoke.yaml", ws.dir / "grids" / "smoke.yaml")
    shutil.copy(ws.dir / "toy.yaml", ws.dir / "grids" / "toy.yaml")
    res = ws.plan(grid, "--resources", "--format", "json", cwd=ws.dir, timeout=300)  # not the grid's directory
    assert res.returncode == 0, res.stderr[-3000:]
    disc = [r for r in json.loads(res.stdout) if r["kind"] == "disc_warmup"]
    assert disc and all(r["params"]["discriminator"] > 0 for r in disc), res.stdout[-2000:]
    assert snapshot(ws.root) is None
