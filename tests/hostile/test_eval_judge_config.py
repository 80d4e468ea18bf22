"""A bad `stages.eval.judge` is refused when the grid is read: exit 2, one line naming the file and the field."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO
from tests.hostile.conftest import assert_user_error, cli, write_grid


@pytest.mark.parametrize("judge, field", [
    ({"url": "localhost:8000", "model": "Qwen2.5-32B-Instruct"}, "stages.eval.judge.url"),
    ({"url": "http://127.0.0.1:8000/v1", "model": "q", "api_key_env": "MY KEY"}, "stages.eval.judge.api_key_env"),
])
def test_a_bad_judge_is_refused_before_anything_is_written(tmp_path, judge, field):
    shutil.copy(REPO / "experiments" / "smoke.yaml", tmp_path / "smoke.yaml")
    shutil.copy(REPO / "experiments" / "toy.yaml", tmp_path / "toy.yaml")
    grid = write_grid(tmp_path / "judge.yaml", {"extends": "smoke.yaml", "stages": {"eval": {"judge": judge}}})
    res = cli("sweep", "plan", grid, "--root", tmp_path / "root", cwd=tmp_path)
    assert_user_error(res, str(grid), field)
    assert not (tmp_path / "root").exists()
