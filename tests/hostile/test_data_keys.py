"""Issue 17 item 2: content keys follow the data's contents, and relative paths mean one thing
(relative to the grid file) whether they are fingerprinted or loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image




def test_replacing_an_image_changes_the_keys(ws):
    grid = ws.local_grid()
    before = ws.plan_keys(grid)
    row = json.loads((ws.data / "sft_public.json").read_text())[0]
    image = ws.data / row["images"][0]
    Image.new("RGB", Image.open(image).size, (0, 0, 0)).save(image)
    after = ws.plan_keys(grid)
    assert after["sft"] != before["sft"], "an SFT image changed but the SFT run key did not"


def test_truncating_a_benchmark_tsv_changes_the_eval_keys(ws):
    grid = ws.local_grid()
    before = ws.plan_keys(grid)
    tsv = ws.data / "bench" / "synth-reasoning.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    tsv.write_text("".join(lines[:2]))
    after = ws.plan_keys(grid)
    assert not set(after["eval"]) & set(before["eval"]), "a benchmark TSV changed but eval keys did not"


def test_relative_local_paths_mean_the_grid_directory(ws, tmp_path_factory):
    """Run the `data` stage from another directory that holds decoy files at the same relative
    paths: the catalog must name the files next to the grid (the ones the key was computed from)."""
    grid = ws.local_grid()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(ws.data, elsewhere / "data")
    assert ws.plan_keys(grid, cwd=elsewhere) == ws.plan_keys(grid)
    res = ws.run(grid, "--stages", "data", cwd=elsewhere, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    [catalog_file] = (ws.root / "runs" / "data").glob("*/catalog.json")
    cat = json.loads(catalog_file.read_text())

    def where(p: str) -> Path:  # relative entries are relative to the catalog's directory
        return (catalog_file.parent / p).resolve()

    data = ws.data.resolve()
    assert [where(p) for p in cat["sft_public"]] == [data / "sft_public.json"]
    assert where(cat["rl"]) == data / "rl_train.parquet"
    assert where(cat["warmup"]) == data / "warmup_pairs.jsonl"
    assert where(cat["image_root"]) == data
    assert where(cat["bench_dir"]) == data / "bench", "a relative bench_dir must mean the grid's directory"


def test_plan_keys_do_not_depend_on_the_working_directory(ws, tmp_path_factory):
    grid = ws.local_grid()
    other = tmp_path_factory.mktemp("cwd")
    res_here, res_there = ws.plan(grid, "--format", "json"), ws.plan(grid, "--format", "json", cwd=other)
    assert res_here.returncode == 0 and res_there.returncode == 0, res_there.stderr
    assert res_here.stdout == res_there.stdout
