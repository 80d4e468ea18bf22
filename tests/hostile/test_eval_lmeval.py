"""`prism-lab eval -b` on lm-eval benchmarks, eval's value ranges, and lm-eval task names checked at plan
time (issue 29, items 5 and 9)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import REPO, cli_env
from tests.hostile.conftest import assert_user_error, cli, snapshot, write_grid


def _eval(session, tmp_path, *args, **env):
    return cli("eval", session.checkpoint, "--bench-dir", session.data / "bench", "--root", tmp_path / "root",
               "--format", "json", *args, timeout=300, **env)


def test_eval_synth_text_runs_through_lm_eval(session, tmp_path):
    res = _eval(session, tmp_path, "-b", "synth-text", "--limit", "4")
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)  # exactly one JSON document
    assert doc["metrics"]["eval/synth-text/n"] == 4
    assert 0 <= doc["metrics"]["eval/synth-text/accuracy"] <= 1


def test_eval_hub_task_without_local_data_is_one_line(session, tmp_path):
    hf = tmp_path / "hf"  # an empty Hugging Face cache: arc_easy's dataset is not local
    res = _eval(session, tmp_path, "-b", "arc_easy", "--limit", "2", HF_HOME=str(hf),
                HF_DATASETS_CACHE=str(hf / "datasets"))
    line = assert_user_error(res, "arc_easy", "not local", "HF_DATASETS_CACHE")
    assert json.loads(res.stdout) == {"error": line.removeprefix("prism-lab: error: ")}
    assert snapshot(tmp_path / "root") is None


@pytest.mark.parametrize("option,value,needle", [
    ("--limit", "0", ">= 1"), ("--limit", "-1", ">= 1"), ("--temperature", "-1", ">= 0"),
    ("--top-p", "5", "(0, 1]"), ("--max-new-tokens", "0", ">= 1"),
])
def test_eval_override_out_of_range_is_one_line(session, tmp_path, option, value, needle):
    res = _eval(session, tmp_path, "-b", "synth-reasoning", option, value)
    assert_user_error(res, option, needle)
    assert "error" in json.loads(res.stdout)
    assert snapshot(tmp_path / "root") is None


def _clone_with_benchmark(tmp_path, name: str, task: str):
    """A copy of the package, benchmarks and grids with one more benchmark YAML (as a user adds one)."""
    clone = tmp_path / "clone"
    for part in ("prism_lab", "benchmarks", "experiments"):
        shutil.copytree(REPO / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests", clone / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    write_grid(clone / "benchmarks" / f"{name}.yaml",
               {"name": name, "kind": "lmeval", "lmeval_task": task, "source": "hf"})
    return clone


@pytest.mark.parametrize("task,needle", [("arc_easyy", "lm-eval has no task"), ("lmeval/nope.yaml", "not found")])
def test_plan_refuses_a_benchmark_naming_a_task_lm_eval_lacks(tmp_path, task, needle):
    clone = _clone_with_benchmark(tmp_path, "typo-task", task)
    grid = write_grid(tmp_path / "g.yaml", {"extends": str(clone / "experiments" / "smoke.yaml"),
                                            "benchmarks": ["synth-reasoning", "typo-task"]})
    env = cli_env()
    env["PYTHONPATH"] = str(clone)
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "prism_lab.cli", "sweep", "plan", str(grid), "--root",
                          str(tmp_path / "root")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert_user_error(res, "g.yaml", "benchmarks[1]", task, needle)
    assert snapshot(tmp_path / "root") is None
