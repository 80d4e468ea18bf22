"""Issue 17 item 3: one grid never overwrites another, and no axis is silently dropped or silently
overrides a core axis."""

from __future__ import annotations

import csv
import json

import pytest

from tests.hostile.conftest import assert_user_error, cli, snapshot


def _algorithms(report_dir) -> set[str]:
    with open(report_dir / "results.csv", newline="") as fh:
        return {row["algorithm"] for row in csv.DictReader(fh)}


def test_a_derived_grid_does_not_take_over_its_base_sweep(ws):
    """variant.yaml extends base.yaml (sweep `hostile`) with another algorithm; running it into the
    same root must leave the `hostile` sweep's cells (and so its report) as they were."""
    variant = ws.grid("variant.yaml", axes={"algorithm": ["dapo"]})
    res = ws.run(ws.dir / "base.yaml", "--stages", "data", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rep = cli("report", "hostile", "--root", ws.root, "--out", ws.dir / "rep-before", cwd=ws.dir, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert _algorithms(ws.dir / "rep-before") == {"grpo"}
    res = ws.run(variant, "--stages", "data", timeout=300)
    if res.returncode == 2:  # refusing is acceptable; then nothing may have been recorded
        assert_user_error(res, "variant.yaml", "name")
    else:
        assert res.returncode == 0, res.stderr[-2000:]
    rep = cli("report", "hostile", "--root", ws.root, "--out", ws.dir / "rep-after", cwd=ws.dir, timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert _algorithms(ws.dir / "rep-after") == {"grpo"}, "the variant's cells replaced the base sweep's"


def test_a_stage_seed_axis_is_honoured(ws):
    """`sft.seed: [5, 6]` is legal and honoured: two SFT runs (seeds 5 and 6), not one."""
    grid = ws.grid(axes={"sft.seed": [5, 6]})
    res = ws.plan(grid, "--format", "json")
    assert res.returncode == 0, res.stderr
    sft = [r for r in json.loads(res.stdout) if r["kind"] == "sft"]
    assert len(sft) == 2, [r["label"] for r in sft]
    assert sorted("sft.seed=5" in r["label"] for r in sft) == [False, True]


@pytest.mark.parametrize("axis,values", [
    ("rl.algorithm", ["dapo"]),
    ("sft.model", ["tiny-s"]),
    ("align.variant", ["gad"]),
    ("eval.benchmarks", [["synth-reasoning"]]),
])
def test_an_axis_on_a_field_the_pipeline_sets_is_refused(ws, axis, values):
    grid = ws.grid(axes={axis: values})
    assert_user_error(ws.plan(grid), "probe.yaml", f"axes.{axis}")
    assert_user_error(ws.run(grid, "--dry-run"), "probe.yaml", f"axes.{axis}")
    assert snapshot(ws.root) is None
