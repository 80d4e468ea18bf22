"""Issue 17 item 6: one line of input cannot make prism-lab use unbounded memory or time."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.hostile.conftest import assert_user_error, cli, snapshot, write_grid

ALIAS_BOMB = """extends: base.yaml
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def test_a_yaml_alias_bomb_is_refused(ws):
    grid = write_grid(ws.dir / "probe.yaml", ALIAS_BOMB)
    t0 = time.time()
    res = ws.plan(grid, timeout=120, mem_gb=3)
    assert_user_error(res, "probe.yaml", "aliases")
    assert time.time() - t0 < 60


def test_a_huge_synthetic_image_size_is_refused(ws):
    grid = ws.grid(data={"synth": {"image_size": 100000}})
    assert_user_error(ws.plan(grid), "probe.yaml", "data.synth.image_size")
    synth = write_grid(ws.dir / "huge-synth.yaml", {"image_size": 100000, "n_sft_public": 1})
    out = ws.dir / "synth-out"
    res = cli("data", "synth", "--out", out, "--config", synth, cwd=ws.dir, timeout=120, mem_gb=3)
    assert_user_error(res, "huge-synth.yaml", "image_size")
    assert snapshot(out) is None


def test_too_many_cells_are_refused_quickly(ws):
    values = {"seed": list(range(100)), "sft.lr": [1e-3 * (i + 1) for i in range(10)],
              "rl.steps": list(range(1, 11))}
    grid = ws.grid(axes=values)  # 100 seeds x 10 x 10 x 2 alignments = 20,000 cells
    t0 = time.time()
    try:
        res = ws.plan(grid, timeout=60, mem_gb=3)
    except subprocess.TimeoutExpired:
        pytest.fail("planning 20,000 cells ran for a minute instead of being refused")
    assert_user_error(res, "probe.yaml", "axes")
    assert time.time() - t0 < 30
    assert snapshot(ws.root) is None
