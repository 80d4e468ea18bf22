"""Issue 29 items 1, 4, 7 and the tune half of 8: `sweep run` and `tune` share one pre-flight. Every
check (usage, inputs, memory fit, stale runs) comes before any side effect; `tune` warns about runs
made by other code and refuses runs that cannot fit, as `sweep run` does; a study's identity covers
its base grid."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.fakes import fake_nvidia_smi
from tests.hostile.conftest import assert_user_error, cli, snapshot

TUNE_PLUGIN = "tests.plugins.tune_chain"


def _make_stale(root: Path) -> int:
    """Pretend another torch version made every done run of ``root``: rewrite their `code` events."""
    con = sqlite3.connect(root / "ledger.sqlite")
    with con:
        rows = con.execute("SELECT id, message FROM events WHERE kind='code'").fetchall()
        for event_id, message in rows:
            fp = json.loads(message)
            fp["packages"]["torch"] = "0.0-other"
            con.execute("UPDATE events SET message=? WHERE id=?", (json.dumps(fp), event_id))
    con.close()
    return len(rows)


@pytest.fixture
def stale_root(ws, session):
    """The session's done data, base and SFT runs, copied into the workspace and made stale."""
    shutil.copytree(session.root, ws.root)
    assert _make_stale(ws.root) >= 3
    return ws.root


@pytest.mark.parametrize("args,needle", [
    (["--gpus", ","], "--gpus"),
    (["--address", "127.0.0.1:1"], "--address"),
])
def test_rerun_stale_after_a_usage_error_leaves_ledger_and_artifacts_alone(ws, stale_root, args, needle):
    before = snapshot(stale_root)
    res = ws.run(ws.dir / "base.yaml", "--stages", "base,sft", "--rerun-stale", *args)
    assert_user_error(res, needle)
    assert snapshot(stale_root) == before, "runs were invalidated before the usage error"
    assert not list((stale_root / "runs").glob("*/*.stale"))


def test_rerun_stale_before_a_memory_refusal_leaves_ledger_and_artifacts_alone(ws, stale_root):
    grid = ws.grid(stages={"rl": {"resources": {"memory_gb": 0.001}}})
    before = snapshot(stale_root)
    res = ws.run(grid, "--rerun-stale")
    assert_user_error(res, "GB per device")
    assert snapshot(stale_root) == before, "runs were invalidated before the memory-fit refusal"


def test_gpu_ids_this_machine_does_not_have_are_refused_before_anything_is_written(ws):
    path = fake_nvidia_smi(ws.dir / "bin", {"0": 24576})
    res = ws.run(ws.dir / "base.yaml", "--stages", "data", "--gpus", "0,1,2,3,4,5,6,7", PATH=path)
    assert_user_error(res, "--gpus", "1,2,3,4,5,6,7")
    assert snapshot(ws.root) is None


# ---- tune -------------------------------------------------------------------------------------------
def _tune_base(tmp: Path, seeds: list[int] = (0, 1)) -> Path:
    counter = str(tmp / "executions.log")
    grid = {"name": "tbase", "pipeline": "test-tune", "axes": {"seed": list(seeds)},
            "stages": {"tune_shared": {"counter": counter}, "tune_trial": {"counter": counter},
                       "tune_eval": {"counter": counter}}}
    path = tmp / "tbase.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def _tune_space(tmp: Path) -> Path:
    space = {"name": "demo", "base": "tbase.yaml", "cell": {"seed": 0}, "sampler": "random", "seed": 0,
             "objective": {"role": "eval/trial", "metric": "eval/avg/accuracy", "reduce": "last",
                           "direction": "maximize"},
             "parameters": {"tune_trial.x": {"type": "float", "low": 0.0, "high": 1.0}}}
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _tune(space: Path, root: Path, *args: str, timeout: float = 180):
    return cli("tune", space, "--root", root, "--wandb", "disabled", *args, timeout=timeout,
               PRISM_LAB_PLUGINS=TUNE_PLUGIN)


def _executions(tmp: Path) -> list[str]:
    p = tmp / "executions.log"
    return p.read_text().splitlines() if p.exists() else []


def test_tune_warns_about_stale_runs_and_reruns_them_on_request(tmp_path):
    _tune_base(tmp_path)
    space, root = _tune_space(tmp_path), tmp_path / "root"
    res = _tune(space, root, "--trials", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "other code" not in res.stderr
    _make_stale(root)
    shared_before = _executions(tmp_path).count("shared")
    res = _tune(space, root, "--trials", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    warnings = [line for line in res.stderr.splitlines() if "made by other code" in line]
    assert len(warnings) == 1 and "--rerun-stale" in warnings[0], res.stderr  # once, not once per trial
    assert _executions(tmp_path).count("shared") == shared_before  # warned, kept
    res = _tune(space, root, "--trials", "3", "--rerun-stale")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _executions(tmp_path).count("shared") == shared_before + 1  # made again with this code


def test_tune_refuses_a_run_that_sweep_run_refuses_for_memory(ws):
    grid = ws.grid("big.yaml", stages={"sft": {"batch_size": 8, "resources": {"processes": 2, "memory_gb": 0.001}}})
    assert_user_error(ws.run(grid), "stage run sft", "GB per device")
    space = ws.dir / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": "big", "base": "big.yaml", "cell": {"size": "4b", "algorithm": "grpo", "alignment": "prism",
                                                    "seed": 0},
        "objective": {"role": "eval/align", "metric": "eval/avg/accuracy", "direction": "maximize"},
        "parameters": {"align.caption_weight": {"type": "float", "low": 0.2, "high": 0.8}}}, sort_keys=False))
    res = cli("tune", space, "--root", ws.root, "--trials", "1", cwd=ws.dir, timeout=180)
    assert_user_error(res, "stage run sft", "GB per device")
    assert snapshot(ws.root) is None


def test_resuming_a_study_after_its_base_grid_changed_is_refused(tmp_path):
    _tune_base(tmp_path)
    space, root = _tune_space(tmp_path), tmp_path / "root"
    res = _tune(space, root, "--trials", "1")
    assert res.returncode == 0, res.stderr[-2000:]
    _tune_base(tmp_path, seeds=[0, 1, 2])  # best.yaml would now run a cell the study never saw
    before = snapshot(root)
    line = assert_user_error(_tune(space, root, "--trials", "2"), "tbase.yaml", "'demo'", "base grid changed")
    assert "--study" in line
    assert snapshot(root) == before


@pytest.mark.parametrize("args,needle", [
    (["--executor", "ray", "--address", "127.0.0.1:1"], "--address"),
    (["--address", "127.0.0.1:1"], "--address"),  # the local executor takes no address
])
def test_tune_with_a_bad_address_writes_nothing(tmp_path, args, needle):
    _tune_base(tmp_path)
    space, root = _tune_space(tmp_path), tmp_path / "root"
    assert_user_error(_tune(space, root, "--trials", "1", *args), needle)
    assert snapshot(root) is None
    assert not _executions(tmp_path)
