"""Malformed grids: exit code 2, one clear line naming file, line and field, ledger untouched."""

from __future__ import annotations

import re

import pytest
import yaml

from prism_lab.errors import ConfigError
from prism_lab.harness.planning import load_grid
from tests.conftest import REPO, run_cli

TOY = (REPO / "experiments" / "toy.yaml").read_text()

# (name, transformation of the toy grid text or a full text, expected fragment of the message, expected line or None)
BASE = yaml.safe_load(TOY)


def dump(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=False)


def edit(**changes) -> str:
    d = yaml.safe_load(TOY)
    for path, value in changes.items():
        node = d
        parts = path.split("__")
        for p in parts[:-1]:
            node = node[p]
        if value is _DEL:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return dump(d)


_DEL = object()

CASES = [
    ("unknown_axis", edit(axes__colour=["red"]), r"axes\.colour: unknown axis 'colour'"),
    ("axis_bad_stage_path", edit(**{"axes__nosuch.lr": [1]}), r"unknown axis 'nosuch\.lr'"),
    ("axis_unknown_field", edit(**{"axes__rl.not_a_field": [1, 2]}), r"axes\.rl\.not_a_field\[0\]: invalid value"),
    ("axis_wrong_type", edit(**{"axes__sft.lr": ["fast"]}), r"axes\.sft\.lr\[0\]: invalid value for 'lr'"),
    ("empty_axis", edit(axes__seed=[]), r"axes\.seed: expected a non-empty list"),
    ("axes_not_list", edit(axes__seed=3), r"axes\.seed: .*valid list"),
    ("missing_core_axis", edit(axes__algorithm=_DEL), r"missing required axis 'algorithm'"),
    ("duplicate_axis_value", edit(axes__algorithm=["grpo", "grpo"]), r"axes\.algorithm\[1\]: duplicate value 'grpo'"),
    ("unknown_algorithm", edit(axes__algorithm=["grpo", "ppo2"]), r"axes\.algorithm\[1\]: unknown algorithm 'ppo2'"),
    ("bad_alignment", edit(axes__alignment=["none", "yes"]), r"axes\.alignment\[1\]: expected one of none, prism, gad"),
    ("seed_not_int", edit(axes__seed=["zero"]), r"axes\.seed\[0\]: expected an integer seed"),
    ("size_not_in_models", edit(axes__size=["4b", "16b"]), r"axes\.size\[1\]: size '16b' has no entry in `models`"),
    ("unknown_preset", edit(models__4b="tiny-xxl"), r"models\.4b: unknown model preset 'tiny-xxl'"),
    ("missing_stage", edit(stages__rl=_DEL), r"stages: missing stage 'rl'"),
    ("missing_align_stage", edit(stages__align=_DEL), r"stages: missing stage 'align'"),
    ("unknown_stage", edit(stages__distill={}), r"stages\.distill: unknown stage 'distill'"),
    ("stage_field_wrong_type", edit(stages__sft={"lr": "high"}), r"stages\.sft\.lr: .*valid number"),
    ("stage_unknown_field", edit(stages__sft={"learning_rate": 1e-3}), r"stages\.sft\.learning_rate: unknown field"),
    ("stage_out_of_range", edit(stages__rl={"n": 0}), r"stages\.rl\.n: .*greater than or equal to 1"),
    ("unknown_top_field", edit(colour="red"), r"colour: unknown field"),
    ("unknown_benchmark", edit(benchmarks=["synth-perception", "mmlu-nope"]), r"benchmarks\[1\]: unknown benchmark 'mmlu-nope'"),
    ("no_benchmarks", edit(benchmarks=[]), r"benchmarks: expected at least one benchmark"),
    ("report_bad_baseline", edit(report__baseline="off"), r"report\.baseline: 'off' is not a value of axis 'alignment'"),
    ("report_bad_axis", edit(report__compare_axis="colour"), r"report\.compare_axis: 'colour' is not an axis"),
    ("unknown_pipeline", edit(pipeline="nope"), r"pipeline: unknown pipeline 'nope'"),
    ("bad_yaml", TOY.replace("axes:", "axes: [unclosed", 1), r"invalid YAML"),
    ("duplicate_key", TOY.replace("  seed: [0, 1, 2]\n", "  seed: [0, 1, 2]\n  seed: [1]\n", 1), r"axes\.seed: duplicate key 'seed'"),
    ("top_level_list", "- a\n- b\n", r"expected a mapping of grid fields"),
    ("data_bad_source", edit(data={"source": "s3"}), r"data\.source: .*'synth' or 'local'"),
    ("data_local_missing", edit(data={"source": "local"}), r"data: .*needs a `local:` section"),
    ("extends_missing", "extends: nothing-here.yaml\n" + TOY, r"extends: file not found"),
    ("size_stages_unknown_size", edit(size_stages={"16b": {"base": {"max_steps": 10}}}),
     r"size_stages\.16b: '16b' is not a size of `models` \(4b, 8b\)"),
    ("size_stages_unknown_stage", edit(size_stages={"4b": {"distill": {}}}),
     r"size_stages\.4b\.distill: 'distill' is not a stage this grid runs; expected one of"),
    ("size_stages_out_of_range", edit(size_stages={"4b": {"base": {"max_steps": -1}}}),
     r"size_stages\.4b\.base\.max_steps: .*greater than or equal"),
    ("size_stages_unknown_field", edit(size_stages={"8b": {"sft": {"learning_rate": 1e-3}}}),
     r"size_stages\.8b\.sft\.learning_rate: unknown field"),
    ("size_stages_pipeline_field", edit(size_stages={"4b": {"sft": {"model": "tiny-m"}}}),
     r"size_stages\.4b\.sft\.model: set by the pipeline from the `models` map"),
    ("size_stages_not_a_mapping", edit(size_stages={"4b": ["base"]}), r"size_stages\.4b: .*valid dictionary"),
    ("sft_length_groups_over_batch", edit(stages__sft__length_groups=64),
     r"stages\.sft: .*length_groups \(64\) must be at most the rows of a micro-batch per process \(32: batch_size 32 "
     r"over 1\)"),
    ("synth_caption_first_share", edit(data__synth__instruct_caption_first_share=1.5),
     r"data\.synth\.instruct_caption_first_share: .*less than or equal to 1"),
    ("size_stages_off_axis_unknown_stage", edit(axes__size=["4b"], size_stages={"8b": {"distill": {}}}),
     r"size_stages\.8b\.distill: 'distill' is not a stage this grid runs"),
]


@pytest.mark.parametrize("name,text,pattern", CASES, ids=[c[0] for c in CASES])
def test_malformed_grid_raises_located_error(tmp_path, name, text, pattern):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_grid(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:"), msg
    assert re.match(rf"^{re.escape(str(path))}:\d+: ", msg) or name in ("top_level_list",), msg
    assert re.search(pattern, msg), msg


def test_error_line_points_at_the_field(tmp_path):
    text = TOY.replace("algorithm: [grpo]", "algorithm: [grpo, dapo, gsp0]")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "gsp0" in l)
    with pytest.raises(ConfigError, match=rf":{line}: axes\.algorithm\[2\]: unknown algorithm 'gsp0'"):
        load_grid(path)


def test_cyclic_extends(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match=r"b\.yaml:1: extends: cyclic inheritance \(.*a\.yaml -> .*b\.yaml -> .*a\.yaml\)"):
        load_grid(tmp_path / "a.yaml")


def test_error_in_parent_is_located_in_parent_file(tmp_path):
    parent = tmp_path / "parent.yaml"
    parent.write_text(TOY.replace("  rl:\n", "  rl:\n    bogus: 1\n", 1))
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\nname: child\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(parent))}:\d+: stages\.rl\.bogus: unknown field"):
        load_grid(child)


@pytest.mark.parametrize("case", [CASES[0], CASES[13], CASES[25], CASES[-3], CASES[-2]],
                         ids=["unknown_axis", "missing_stage", "bad_yaml", "sft_length_groups_over_batch",
                              "synth_caption_first_share"])
def test_cli_exit_code_2_one_line_and_ledger_untouched(tmp_path, case):
    name, text, pattern = case
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    root = tmp_path / "root"
    # an existing ledger must not change
    ok = run_cli("sweep", "plan", "experiments/toy.yaml", "--root", str(root))
    assert ok.returncode == 0, ok.stderr
    for args in (["sweep", "plan", str(path)], ["sweep", "run", str(path)], ["sweep", "status", str(path)]):
        res = run_cli(*args, "--root", str(root))
        assert res.returncode == 2, (args, res.stderr)
        lines = [l for l in res.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("prism-lab: error: "), res.stderr
        assert re.search(pattern, lines[0]), lines[0]
        assert res.stdout == ""
    assert not (root / "ledger.sqlite").exists()
