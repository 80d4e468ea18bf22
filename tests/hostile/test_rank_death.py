"""A torchrun rank killed mid-run (issue 29, item 6): one failed run with one line of error in the ledger,
the driver finishes the other runs, no Rich MarkupError from gloo's `[/__w/pytorch/...]` text."""

from __future__ import annotations

import io
import json

from rich.console import Console

from tests.hostile.conftest import cli, write_grid

PLUGIN = {"PRISM_LAB_PLUGINS": "tests.plugins.rank_death"}


def test_printing_an_error_with_closing_tag_brackets_does_not_raise():
    from prism_lab.harness.executors.scheduler import print_failure

    buf = io.StringIO()
    print_failure(Console(file=buf, width=400), "sft [/x]", "k" * 16, "[/__w/pytorch/third_party/gloo] closed [bold]")
    assert "sft [/x]" in buf.getvalue() and "[/__w/pytorch/third_party/gloo] closed [bold]" in buf.getvalue()


def test_a_sigkilled_rank_fails_its_run_and_the_sweep_goes_on(tmp_path):
    grid = write_grid(tmp_path / "death.yaml", {"name": "death", "pipeline": "test-rank-death",
                                                "axes": {"x": ["die", "ok"]},
                                                "stages": {"step": {"marker": str(tmp_path / "died")}}})
    res = cli("sweep", "run", grid, "--root", tmp_path / "root", "-q", "--workers", "2", timeout=300, **PLUGIN)
    out = res.stdout + res.stderr
    assert "Traceback" not in out and "MarkupError" not in out, out[-3000:]
    assert res.returncode == 1, out[-3000:]  # a failed run, not a crashed driver
    assert "1 run(s) finished" in res.stderr and "1 failed" in res.stderr, res.stderr
    status = cli("sweep", "status", grid, "--root", tmp_path / "root", "--format", "json", **PLUGIN)
    assert status.returncode == 0, status.stderr
    rows = {r["label"]: r for r in json.loads(status.stdout)}
    assert rows["step x=ok"]["status"] == "done"
    assert rows["step x=die"]["status"] == "failed"
    error = rows["step x=die"]["error"]
    assert error and "\n" not in error, error
    table = cli("sweep", "status", grid, "--root", tmp_path / "root", **PLUGIN)  # the error shown in a table
    assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr[-2000:]
