"""W&B runs carry the grid axes (config), the sweep (group) and `axis=value` tags; eval sample tables."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from prism_lab.harness.ledger import Ledger
from prism_lab.harness.run_stage import axis_tags, run_axes
from prism_lab.harness.tracking import Tracker

pytest.importorskip("wandb")


def _plan(tmp_path):
    cells = []
    for i, al in enumerate(["none", "prism"]):
        cells.append(SimpleNamespace(id=f"c{i}", axes={"size": "4b", "alignment": al, "seed": 0,
                                                       "align.caption_weight": 0.5},
                                     runs={"sft": "sft-key", "rl": f"rl-{al}"}))
    runs = {k: SimpleNamespace(key=k, kind=k.split("-")[0], label=k, config={}, inputs={})
            for k in ("sft-key", "rl-none", "rl-prism")}
    spec = SimpleNamespace(model_dump_json=lambda: "{}")
    return SimpleNamespace(grid=SimpleNamespace(name="sw", path=tmp_path / "g.yaml", spec=spec), cells=cells,
                           runs=runs)


def test_axes_of_a_shared_run_are_the_common_ones(tmp_path):
    led = Ledger(tmp_path / "root")
    led.record_plan(_plan(tmp_path))
    assert run_axes(led, "sft-key") == {"size": "4b", "seed": 0, "align.caption_weight": 0.5}
    assert run_axes(led, "rl-prism") == {"size": "4b", "alignment": "prism", "seed": 0, "align.caption_weight": 0.5}
    assert run_axes(led, "unknown") == {}
    assert axis_tags({"size": "4b", "seed": 0}) == ["size=4b", "seed=0"]


def test_offline_run_has_axes_group_tags_and_sample_table(tmp_path, monkeypatch):
    from tests.wandb_offline import artifacts, history, run_info

    monkeypatch.setenv("PRISM_LAB_WANDB", "offline")
    led = Ledger(tmp_path / "root")
    led.record_plan(_plan(tmp_path))
    axes = run_axes(led, "rl-prism")
    tr = Tracker(led, "rl-prism" * 4, kind="eval", label="eval rl", config={"axes": axes, "limit": 4},
                 run_dir=tmp_path / "run", group="sw", tags=axis_tags(axes))
    tr.log(0, {"eval/x/accuracy": 0.5})
    img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    tr.log_table("samples/x", ["index", "prompt", "image", "response", "score"], [["0", "q", img, "a", 1.0]])
    tr.finish()
    [run_file] = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    for _ in range(100):  # the W&B service process may still be writing the file after finish() returns
        try:
            info = run_info(run_file)
            if any("samples/x/_type" in r for r in history(run_file)):
                break
        except AssertionError:
            pass
        time.sleep(0.1)
    info = run_info(run_file)
    assert info["group"] == "sw" and info["job_type"] == "eval"
    assert sorted(info["tags"]) == ["align.caption_weight=0.5", "alignment=prism", "seed=0", "size=4b"]
    assert info["config"]["axes"] == axes and info["config"]["limit"] == 4
    rows = history(run_file)
    assert any(r.get("eval/x/accuracy") == 0.5 for r in rows)
    row = next(r for r in rows if "samples/x/_type" in r)
    assert row["samples/x/_type"] == "table-file" and row["samples/x/nrows"] == 1
    table = json.loads((run_file.parent / "files" / row["samples/x/path"]).read_text())
    assert table["columns"] == ["index", "prompt", "image", "response", "score"]
    assert table["data"][0][0] == "0" and table["data"][0][3] == "a" and table["data"][0][4] == 1.0
    # the image travels in the table's run_table artifact (uploaded by `wandb sync`)
    [(kind, paths)] = [a for a in artifacts(run_file) if a[0] == "run_table"]
    assert "samples/x.table.json" in paths and any(p.startswith("media/images/") and p.endswith(".png") for p in paths)
