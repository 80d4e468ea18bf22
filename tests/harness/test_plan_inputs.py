"""`sweep plan` on a machine that lacks a grid's released files: official benchmark TSVs missing from
$LMUData and local datasets whose directory is not here are warning lines and the plan is printed
(exit 0); `sweep run` refuses the same grid with one line naming the field and the file (exit 2). A file
missing from a directory that is here stays an error at plan time too."""

from __future__ import annotations

import yaml

from tests.conftest import REPO, cli_env, run_cli


def _grid(tmp_path, data_dir: str) -> str:
    grid = {"extends": str(REPO / "experiments" / "smoke.yaml"), "name": "released",
            "data": {"source": "local", "local": {"sft": [f"{data_dir}/sft.json"], "rl": f"{data_dir}/rl.parquet",
                                                 "warmup": f"{data_dir}/warmup.jsonl", "image_root": data_dir}},
            "stages": {"base": {"datasets": ["public"], "vision_steps": 0, "caption_steps": 0}},  # local data: no caption rows
            "benchmarks": ["MathVista_MINI"]}
    path = tmp_path / "released.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return str(path)


def test_plan_warns_about_files_not_on_this_machine_and_run_refuses(tmp_path):
    grid = _grid(tmp_path, "not_copied_yet")
    env = cli_env(LMUData=str(tmp_path / "lmu"))  # an empty VLMEvalKit data root
    plan = run_cli("sweep", "plan", grid, "--root", str(tmp_path / "root"), env=env)
    assert plan.returncode == 0, plan.stderr
    warnings = [line for line in plan.stderr.splitlines() if line.strip()]
    assert warnings and all(line.startswith("warning: ") and "released.yaml:" in line for line in warnings)
    assert any("data.local.bench_dir" in w and "MathVista_MINI.tsv" in w for w in warnings), plan.stderr
    assert any("data.local.rl" in w and "not on this machine" in w for w in warnings), plan.stderr
    assert "plan of released" in plan.stdout
    run = run_cli("sweep", "run", grid, "--root", str(tmp_path / "root"), env=env)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert lines[0].startswith("prism-lab: error: ") and "data.local.bench_dir" in lines[0]
    assert "MathVista_MINI.tsv" in lines[0]
    assert not (tmp_path / "root" / "ledger.sqlite").exists()


def test_plan_still_refuses_a_file_missing_from_a_directory_that_is_here(tmp_path):
    (tmp_path / "data").mkdir()
    plan = run_cli("sweep", "plan", _grid(tmp_path, "data"), "--root", str(tmp_path / "root"),
                   env=cli_env(LMUData=str(tmp_path / "lmu")))
    lines = [line for line in plan.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert plan.returncode == 2 and len(lines) == 1, plan.stderr
    assert "data.local.sft[0]" in lines[0] and "sft.json" in lines[0]
