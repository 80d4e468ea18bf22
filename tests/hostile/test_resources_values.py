"""A stage's `resources` block (issue 29, items 10 and 11): wrongly typed or absurd values are one line
naming the grid file and the field; a CPU run whose ranks cannot fit this machine's memory is refused
before anything is written; a planner hint (`memory_gb`) never changes a run's content key, while `cpus`
(the thread count, which changes the bits) does."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.hostile.conftest import assert_user_error, cli, snapshot, write_grid


@pytest.fixture
def grids(tmp_path: Path) -> Path:
    for name in ("smoke.yaml", "toy.yaml"):
        shutil.copy(REPO / "experiments" / name, tmp_path / name)
    return tmp_path


def sft_resources(d: Path, resources: dict, name: str = "probe.yaml", **sft) -> Path:
    return write_grid(d / name, {"extends": "smoke.yaml", "stages": {"sft": {"resources": resources, **sft}}})


@pytest.mark.parametrize("field,value,expected", [
    ("processes", True, "valid integer"),
    ("gpus", False, "valid integer"),
    ("offload", "yes", "valid boolean"),
    ("gradient_checkpointing", 1, "valid boolean"),
    ("cpus", 10**6, "less than or equal"),
])
def test_a_resources_value_of_the_wrong_type_or_absurd_is_refused(grids, field, value, expected):
    grid = sft_resources(grids, {field: value})
    res = cli("sweep", "plan", grid, "--root", grids / "root", cwd=grids)
    assert_user_error(res, "probe.yaml", f"stages.sft.resources.{field}", expected)
    assert snapshot(grids / "root") is None


def host_bytes() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return float(line.split()[1]) * 1024
    pytest.skip("no /proc/meminfo")


def test_cpu_ranks_that_cannot_fit_host_memory_are_refused_before_anything_is_written(grids):
    # each rank is a Python process with torch loaded: at least 0.25 GB resident (0.27 GB measured after
    # the imports alone), so this many ranks of even the tiniest model cannot fit this machine's memory
    n = math.ceil(host_bytes() / 0.25e9) + 1
    if n > 1024:
        pytest.skip(f"host memory too large to exceed with at most 1024 processes ({n} needed)")
    grid = sft_resources(grids, {"processes": n}, batch_size=n, length_groups=1)
    plan = cli("sweep", "plan", grid, "--root", grids / "root", "--resources", "--format", "json", cwd=grids)
    assert plan.returncode == 0, plan.stderr[-2000:]
    sft = [r for r in json.loads(plan.stdout) if r["kind"] == "sft"]
    assert sft and all(r["fits"] is False for r in sft), sft
    res = cli("sweep", "run", grid, "--root", grids / "root", "-q", cwd=grids)
    assert_user_error(res, "sft", f"{n} process(es)")
    assert snapshot(grids / "root") is None


def plan_keys(d: Path, grid: Path) -> dict[str, list[str]]:
    res = cli("sweep", "plan", grid, "--root", d / "root", "--format", "json", cwd=d)
    assert res.returncode == 0, res.stderr[-2000:]
    out: dict[str, list[str]] = {}
    for run in json.loads(res.stdout):
        out.setdefault(run["kind"], []).append(run["key"])
    return {k: sorted(v) for k, v in out.items()}


def test_a_planner_hint_keeps_every_key_and_cpus_changes_them(grids):
    plain = plan_keys(grids, sft_resources(grids, {"processes": 2}, "plain.yaml"))
    hinted = plan_keys(grids, sft_resources(grids, {"processes": 2, "memory_gb": 64}, "hinted.yaml"))
    assert hinted == plain  # memory_gb is read by the fit check only: SFT and everything after it are the same runs
    default = plan_keys(grids, grids / "smoke.yaml")
    only_hint = plan_keys(grids, sft_resources(grids, {"memory_gb": 8}, "only_hint.yaml"))
    assert only_hint == default
    # cpus sets each process's thread count, and torch's CPU reductions give other low-order bits with
    # another thread count (README, "Content keys"): it stays in the key
    threads = plan_keys(grids, sft_resources(grids, {"processes": 2, "cpus": 4}, "threads.yaml"))
    assert threads["sft"] != plain["sft"] and threads["data"] == plain["data"]
