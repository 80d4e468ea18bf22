"""Issue 17 item 8: a sweep's name becomes a directory name, so it must be a safe file name."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import assert_user_error, cli, snapshot


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", "", " "])
def test_unsafe_sweep_names_are_refused(ws, name):
    grid = ws.grid(name=name)
    assert_user_error(ws.plan(grid), "probe.yaml", "name")
    assert snapshot(ws.root) is None


def test_a_dotdot_sweep_never_reports_into_the_working_directory(ws):
    """Unfixed: `name: ".."` is recorded, and `report` writes into ./ and deletes ./plots/*.png."""
    grid = ws.grid(name="..")
    cwd = ws.dir / "here"
    (cwd / "plots").mkdir(parents=True)
    (cwd / "plots" / "keep.png").write_bytes(b"precious")
    before = snapshot(cwd)
    ran = ws.run(grid, "--stages", "data", cwd=cwd, timeout=300)
    assert_user_error(ran, "probe.yaml", "name")
    res = cli("report", grid, "--root", ws.root, cwd=cwd)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert snapshot(cwd) == before
