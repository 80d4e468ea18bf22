"""Issue 29 item 3: `report --out DIR` writes only what it owns, inside a directory it owns.

The ledger is tests/report/test_report.py's (a sweep `rep` with known numbers, made without training); every probe
runs the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile.conftest import assert_user_error, cli, snapshot
from tests.report.test_report import ledger_root  # noqa: F401 - the fixture: a ledger with sweep `rep`

MANIFEST = ".prism-lab-report.json"


def report(root: Path, out: Path | str, **env: str):
    return cli("report", "rep", "--root", root, "--out", out, cwd=root.parent, **env)


def on_disk(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def test_a_directory_with_other_files_is_refused_and_left_alone(ledger_root, tmp_path):  # noqa: F811
    out = tmp_path / "mine"
    (out / "plots").mkdir(parents=True)
    (out / "results.csv").write_text("my own results\n")
    (out / "plots" / "figure.png").write_bytes(b"my figure")
    before = snapshot(out)
    assert_user_error(report(ledger_root, out), "--out", str(out), MANIFEST)
    assert snapshot(out) == before


def test_a_rerun_replaces_only_the_files_its_manifest_lists(ledger_root, tmp_path):  # noqa: F811
    out = tmp_path / "rep"
    res = report(ledger_root, out)
    assert res.returncode == 0, res.stderr[-2000:]
    listed = set(json.loads((out / MANIFEST).read_text())["files"])
    assert listed == on_disk(out) - {MANIFEST}
    assert {"report.md", "results.csv", "plots/delta_avg.png"} <= listed
    assert not [p for p in out.iterdir() if p.name.startswith(".prism-lab-report.staging")]

    (out / "notes.md").write_text("my notes\n")
    (out / "plots" / "mine.png").write_bytes(b"my plot")
    (out / "plots" / "gone_run.png").write_bytes(b"a plot of a run no longer in the sweep")
    manifest = json.loads((out / MANIFEST).read_text())
    manifest["files"].append("plots/gone_run.png")  # as if an earlier report had written it
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / "results.csv").write_text("stale\n")

    res = report(ledger_root, out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "notes.md").read_text() == "my notes\n"
    assert (out / "plots" / "mine.png").read_bytes() == b"my plot"
    assert not (out / "plots" / "gone_run.png").exists()  # the report's own stale plot
    assert (out / "results.csv").read_text() != "stale\n"
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == listed


def test_a_report_directory_never_overwrites_a_file_it_did_not_write(ledger_root, tmp_path):  # noqa: F811
    out = tmp_path / "rep"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"written_by": "prism-lab report", "sweep": "rep", "files": []}))
    (out / "results.csv").write_text("my own results\n")
    before = snapshot(out)
    assert_user_error(report(ledger_root, out), "--out", "results.csv")
    assert snapshot(out) == before


def test_a_manifest_naming_files_outside_the_directory_is_refused(ledger_root, tmp_path):  # noqa: F811
    out = tmp_path / "rep"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (out / MANIFEST).write_text(json.dumps({"files": ["../victim.txt"]}))
    before = snapshot(tmp_path)
    assert_user_error(report(ledger_root, out), "--out", MANIFEST)
    assert snapshot(tmp_path) == before


def test_the_home_directory_is_refused_even_when_empty(ledger_root, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    assert_user_error(report(ledger_root, home, HOME=str(home)), "--out", "home directory")
    assert snapshot(home) == {}


@pytest.mark.parametrize("place", ["/", "/mnt"])
def test_system_directories_are_refused(ledger_root, place):  # noqa: F811
    written = [Path(place) / name for name in ("report.md", "results.csv", MANIFEST)]
    assert not any(p.exists() for p in written)
    assert_user_error(report(ledger_root, place), "--out", "system directory")
    assert not any(p.exists() for p in written)
