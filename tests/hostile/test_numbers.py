"""Issue 17 item 9: infinite and out-of-range numbers are refused when the grid is read, not at run time."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import assert_user_error, cli, snapshot

INF = float("inf")

CASES = {
    "sft-lr-inf": ({"stages": {"sft": {"lr": INF}}}, "stages.sft.lr"),
    "sft-lr-nan": ({"stages": {"sft": {"lr": float("nan")}}}, "stages.sft.lr"),
    "sft-weight-decay-inf": ({"stages": {"sft": {"weight_decay": INF}}}, "stages.sft.weight_decay"),
    "sft-epochs-inf": ({"stages": {"sft": {"epochs": INF}}}, "stages.sft.epochs"),
    "sft-betas-inf": ({"stages": {"sft": {"adam_betas": [0.9, INF]}}}, "stages.sft.adam_betas"),
    "align-caption-weight-inf": ({"stages": {"align": {"caption_weight": INF}}}, "stages.align.caption_weight"),
    "rl-lr-inf": ({"stages": {"rl": {"algorithm_overrides": {"lr": INF}}}}, "stages.rl.algorithm_overrides"),
    "seed-beyond-64-bits": ({"axes": {"seed": [2**64]}}, "axes.seed"),
    "negative-seed": ({"axes": {"seed": [-1]}}, "axes.seed"),
    "stage-seed-beyond-64-bits": ({"stages": {"sft": {"seed": 2**70}}}, "stages.sft.seed"),
    "synth-seed-beyond-64-bits": ({"data": {"synth": {"seed": 2**64}}}, "data.synth.seed"),
    "inf-axis-value": ({"axes": {"sft.lr": [1e-3, INF]}}, "axes.sft.lr"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_numbers_are_refused_by_plan(ws, name):
    fields, needle = CASES[name]
    grid = ws.grid(**fields)
    assert_user_error(ws.plan(grid), "probe.yaml", needle)
    assert snapshot(ws.root) is None


def test_eval_refuses_a_seed_beyond_64_bits(session, ws):
    res = cli("eval", session.checkpoint, "-b", "synth-reasoning", "--bench-dir", ws.data / "bench",
              "--root", ws.root, "--seed", str(2**64), cwd=ws.dir)
    assert_user_error(res, "--seed")
    assert snapshot(ws.root) is None


def test_data_synth_refuses_a_seed_beyond_64_bits(ws):
    out = ws.dir / "synth-out"
    res = cli("data", "synth", "--out", out, "--config", ws.dir / "synth.yaml", "--seed", str(2**64), cwd=ws.dir)
    assert_user_error(res, "seed")
    assert snapshot(out) is None
