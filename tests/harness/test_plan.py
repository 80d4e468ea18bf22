"""Planner: deduplicated stage runs, content keys, inheritance, path axes, JSON output."""

from __future__ import annotations

import json

import yaml

from prism_lab.harness.planning import build_plan, load_grid
from tests.conftest import REPO, run_cli

TOY = REPO / "experiments" / "toy.yaml"


def toy_variant(tmp_path, name="v", **stage_changes):
    d = yaml.safe_load(TOY.read_text())
    for kind, changes in stage_changes.items():
        d["stages"].setdefault(kind, {}).update(changes)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def keys_by_kind(plan):
    out = {}
    for run in plan.runs.values():
        out.setdefault(run.kind, set()).add(run.key)
    return out


def test_a_grid_that_narrows_the_size_axis_keeps_each_size_its_own_settings(tmp_path):
    both = tmp_path / "both.yaml"
    both.write_text(f"extends: {TOY}\nname: both\nsize_stages:\n  4b: {{base: {{max_steps: 2222}}}}\n"
                    "  8b: {base: {max_steps: 3333}}\n")
    full = {r.config["model"]: r for r in build_plan(load_grid(both)).runs.values() if r.kind == "base"}
    for size, model, steps in (("4b", "tiny-s", 2222), ("8b", "tiny-m", 3333)):
        g = tmp_path / f"{size}.yaml"
        g.write_text(f"extends: {both}\nname: only-{size}\naxes:\n  size: [{size}]\n")
        (base,) = [r for r in build_plan(load_grid(g)).runs.values() if r.kind == "base"]
        assert base.config["model"] == model and base.key == full[model].key  # same run as in the full grid
        assert base.config["max_steps"] == steps  # each size its own settings


def test_toy_plan_counts():
    plan = build_plan(load_grid(TOY))
    assert len(plan.cells) == 12  # 2 sizes x 1 algorithm x 2 alignments x 3 seeds
    assert plan.count("data") == 1
    assert plan.count("base") == 2  # one per size, shared by every seed
    assert plan.count("sft") == 6
    assert plan.count("disc_warmup") == 6
    assert plan.count("align") == 6
    assert plan.count("rl") == 12
    # eval of every checkpoint: 2 base + 6 sft + 6 align + 12 rl
    assert plan.count("eval") == 26
    evaluated = {r.inputs["checkpoint"] for r in plan.runs.values() if r.kind == "eval"}
    assert evaluated == {r.key for r in plan.runs.values() if r.kind in ("base", "sft", "align", "rl")}


def test_toy_algos_adds_only_rl_runs_to_the_toy_grid():
    toy = keys_by_kind(build_plan(load_grid(TOY)))
    algos = keys_by_kind(build_plan(load_grid(TOY.parent / "toy-algos.yaml")))
    for kind in ("data", "base", "sft", "disc_warmup", "align"):
        assert toy[kind] == algos[kind], kind
    assert toy["rl"] < algos["rl"] and len(algos["rl"]) == 36


def test_shared_runs_belong_to_their_cells():
    plan = build_plan(load_grid(TOY))
    for run in plan.runs.values():
        if run.kind == "base":
            assert len(run.cells) == 6  # 3 seeds x 2 alignments
        if run.kind == "sft":
            assert len(run.cells) == 2  # 2 alignments
        if run.kind in ("disc_warmup", "align", "rl"):
            assert len(run.cells) == 1
    # every cell's roles point at runs with the right kind
    for cell in plan.cells:
        assert plan.runs[cell.runs["sft"]].kind == "sft"
        assert plan.runs[cell.runs["sft"]].inputs["policy"] == cell.runs["base"]
        assert ("align" in cell.runs) == (cell.axes["alignment"] != "none")
        rl = plan.runs[cell.runs["rl"]]
        assert rl.config["algorithm"] == cell.axes["algorithm"]
        expected_policy = cell.runs["align"] if "align" in cell.runs else cell.runs["sft"]
        assert rl.inputs["policy"] == expected_policy


def test_topological_order():
    plan = build_plan(load_grid(TOY))
    seen = set()
    for key, run in plan.runs.items():
        assert all(dep in seen for dep in run.inputs.values())
        seen.add(key)


def test_rl_only_change_keeps_sft_and_align_keys(tmp_path):
    base = keys_by_kind(build_plan(load_grid(TOY)))
    changed = keys_by_kind(build_plan(load_grid(toy_variant(tmp_path, rl={"steps": 21, "temperature": 0.9}))))
    for kind in ("data", "base", "sft", "disc_warmup", "align"):
        assert base[kind] == changed[kind], kind
    assert base["rl"].isdisjoint(changed["rl"])
    # evals of base/sft/align checkpoints are unchanged, evals of rl checkpoints are new
    assert len(base["eval"] & changed["eval"]) == 2 + 6 + 6


def test_sft_change_propagates_downstream(tmp_path):
    base = keys_by_kind(build_plan(load_grid(TOY)))
    changed = keys_by_kind(build_plan(load_grid(toy_variant(tmp_path, sft={"lr": 1e-3}))))
    assert base["data"] == changed["data"] and base["base"] == changed["base"]
    for kind in ("sft", "disc_warmup", "align", "rl"):
        assert base[kind].isdisjoint(changed[kind]), kind
    assert len(base["eval"] & changed["eval"]) == 2  # only the evals of the base runs stay


def test_keys_are_stable_and_defaults_are_resolved(tmp_path):
    a = build_plan(load_grid(TOY))
    b = build_plan(load_grid(TOY))
    assert list(a.runs) == list(b.runs)
    # writing a default explicitly does not change any key
    explicit = toy_variant(tmp_path, rl={"acc_weight": 0.8, "format_weight": 0.2})
    assert set(build_plan(load_grid(explicit)).runs) == set(a.runs)
    sft = next(r for r in a.runs.values() if r.kind == "sft")
    assert sft.config["warmup_ratio"] == 0.05 and sft.config["grad_clip"] == 1.0  # toy value + paper default


def test_path_axis_and_seed_axis(tmp_path):
    d = yaml.safe_load(TOY.read_text())
    d["axes"]["rl.temperature"] = [0.7, 1.0]
    d["axes"]["seed"] = [0, 1]
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(d))
    plan = build_plan(load_grid(p))
    assert len(plan.cells) == 2 * 1 * 2 * 2 * 2  # size x algorithm x alignment x seed x rl.temperature
    assert plan.count("sft") == 4  # per size and seed; the rl-only axis does not multiply sft
    assert plan.count("align") == 4
    assert plan.count("rl") == 16
    temps = {r.config["temperature"] for r in plan.runs.values() if r.kind == "rl"}
    assert temps == {0.7, 1.0}
    seeds = {r.config["seed"] for r in plan.runs.values() if r.kind == "sft"}
    assert seeds == {0, 1}


def test_extends_inherits_and_overrides(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {TOY}\nname: child\naxes:\n  algorithm: [grpo]\nstages:\n  rl:\n    steps: 3\n")
    grid = load_grid(child)
    assert grid.name == "child"
    assert grid.spec.axes["algorithm"] == ["grpo"] and grid.spec.axes["size"] == ["4b", "8b"]
    assert grid.spec.stages["rl"]["steps"] == 3 and grid.spec.stages["rl"]["n"] == 8
    assert grid.spec.stages["sft"]["lr"] == 5e-4
    plan = build_plan(grid)
    assert plan.count("rl") == 12  # 2 sizes x 2 alignments x 3 seeds


def test_plan_json_output():
    res = run_cli("sweep", "plan", str(TOY), "--format", "json", "--root", "/nonexistent/prism-root")
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)
    kinds = [r["kind"] for r in runs]
    assert kinds.count("sft") == 6 and kinds.count("align") == 6 and kinds.count("rl") == 12
    for r in runs:
        assert set(r) == {"key", "kind", "label", "inputs", "cells", "status"}
        assert r["status"] == "new" and len(r["key"]) == 64
    keys = {r["key"] for r in runs}
    assert all(v in keys for r in runs for v in r["inputs"].values())


def test_size_stages_change_only_that_sizes_runs(tmp_path):
    """`size_stages` sets a stage's fields for one size: that size's runs (and what depends on them) get new keys,
    the other size's runs keep theirs; an axis on the same field still wins."""
    d = yaml.safe_load(TOY.read_text())
    d.setdefault("size_stages", {})["4b"] = {"base": {"max_steps": 3000, "caption_steps": 7}, "sft": {"lr": 1.0e-4}}
    d["axes"]["sft.lr"] = [2.0e-4]
    p = tmp_path / "per_size.yaml"
    p.write_text(yaml.safe_dump(d))
    plan = build_plan(load_grid(p))

    def runs(kind, size):
        return [r for r in plan.runs.values() if r.kind == kind and r.label.startswith(f"{kind} size={size}")]

    base4, base8 = runs("base", "4b"), runs("base", "8b")
    toy_8b = d["size_stages"].get("8b", {}).get("base", {})  # the toy's own 8b entry, if any, stays
    assert [r.config["max_steps"] for r in base4] == [3000]
    assert [r.config["max_steps"] for r in base8] == [toy_8b.get("max_steps", d["stages"]["base"]["max_steps"])] != [3000]
    assert base4[0].config["caption_steps"] == 7
    assert base8[0].config["caption_steps"] == toy_8b.get("caption_steps", d["stages"]["base"]["caption_steps"]) != 7
    assert base4[0].config["vision_steps"] == base8[0].config["vision_steps"] == d["stages"]["base"]["vision_steps"]
    assert {r.config["lr"] for r in runs("sft", "4b") + runs("sft", "8b")} == {2.0e-4}  # the axis wins
    toy = build_plan(load_grid(toy_variant(tmp_path, "same_lr", sft={"lr": 2.0e-4})))
    toy_base8 = [r.key for r in toy.runs.values() if r.kind == "base" and "size=8b" in r.label]
    toy_base4 = [r.key for r in toy.runs.values() if r.kind == "base" and "size=4b" in r.label]
    assert toy_base8 == [base8[0].key] and toy_base4 != [base4[0].key]
    toy_sft8 = {r.key for r in toy.runs.values() if r.kind == "sft" and "size=8b" in r.label}
    assert toy_sft8 == {r.key for r in runs("sft", "8b")}  # untouched size: every run reused
    assert not {r.key for r in runs("sft", "4b")} & {r.key for r in toy.runs.values()}


def test_a_stage_section_shares_nothing_with_the_grid(tmp_path):
    """The pipeline sets axis values (nested paths too) into the section it gets: with a `size_stages` entry merged
    in, a nested field must still be the section's own copy, never the grid's `stages` dict."""
    d = yaml.safe_load(TOY.read_text())
    d["size_stages"] = {"4b": {"rl": {"steps": 10}}}
    p = tmp_path / "nested.yaml"
    p.write_text(yaml.safe_dump(d))
    spec = load_grid(p).spec
    for size in ("4b", "8b"):
        section = spec.stage_section("rl", size)
        section["algorithm_overrides"]["lr"] = 0.5
        section["algorithm_overrides"]["overlong_buffer"]["len_ratio"] = 0.9
    assert spec.stages["rl"]["algorithm_overrides"]["lr"] == 1.0e-4
    assert spec.stages["rl"]["algorithm_overrides"]["overlong_buffer"] == {"len_ratio": 0.5}
    assert spec.stage_section("rl", "4b")["steps"] == 10 and spec.stage_section("rl", "8b")["steps"] == 20
