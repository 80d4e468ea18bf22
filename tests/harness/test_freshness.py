"""Reproducible and fresh: no shipped grid stops on the wall clock; every run records the code that made it,
`sweep status` and `report` flag runs made by other code, and `sweep run --rerun-stale` makes them again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism_lab.harness.freshness import code_fingerprint, imported_sources, stale_reasons
from prism_lab.harness.ledger import Ledger
from prism_lab.harness.machine import (
    conflicting_machines,
    cpu_model,
    group_machines,
    machine_label,
    numeric_machine,
    simd_level,
)
from tests.conftest import REPO, cli_env, run_cli
from tests.harness.test_executor import PLUGIN, executions, write_grid

SHIPPED_GRIDS = sorted((REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("grid", SHIPPED_GRIDS, ids=[g.name for g in SHIPPED_GRIDS])
def test_no_shipped_grid_stops_a_stage_on_the_wall_clock(grid):
    from prism_lab.harness.planning import build_plan, load_grid

    plan = build_plan(load_grid(grid))
    timed = [(r.label, r.config["max_minutes"]) for r in plan.runs.values() if r.config.get("max_minutes")]
    assert timed == []


def test_a_fingerprint_names_the_imported_sources_and_the_numeric_packages():
    fp = code_fingerprint()
    assert "harness/freshness.py" in fp["sources"] and "harness/ledger.py" in fp["sources"]
    assert all(len(d) == 16 for d in fp["sources"].values())
    assert "torch" in fp["packages"] and "transformers" in fp["packages"]
    assert stale_reasons(fp) == []  # this very code made it


def test_stale_reasons_name_changed_and_missing_files_and_package_versions(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")

    class Mod:
        def __init__(self, path: Path) -> None:
            self.__file__ = str(path)

    import prism_lab.harness.freshness as fr

    old_dir = fr.PACKAGE_DIR
    fr.PACKAGE_DIR = pkg.resolve()
    try:
        sources = imported_sources([Mod(pkg / "a.py"), Mod(pkg / "sub" / "b.py"), Mod(tmp_path / "other.py")])
    finally:
        fr.PACKAGE_DIR = old_dir
    assert sorted(sources) == ["a.py", "sub/b.py"]
    fp = {"sources": sources, "packages": {"torch": "2.13.0"}}
    assert stale_reasons(fp, package_dir=pkg, versions={"torch": "2.13.0"}) == []
    (pkg / "a.py").write_text("x = 3\n")
    (pkg / "sub" / "b.py").unlink()
    reasons = stale_reasons(fp, package_dir=pkg, versions={"torch": "2.14.0"})
    assert reasons == ["a.py changed", "sub/b.py no longer exists", "torch 2.13.0 -> 2.14.0"]
    assert stale_reasons(None) == ["no code fingerprint recorded (made by an older prism-lab)"]


def _status(grid: Path, root: Path) -> dict[str, dict]:
    res = run_cli("sweep", "status", str(grid), "--root", str(root), "--format", "json", env=cli_env(**PLUGIN))
    assert res.returncode == 0, res.stderr
    return {r["label"]: r for r in json.loads(res.stdout)}


def test_a_run_made_by_other_code_is_flagged_and_rerun_with_its_dependents(tmp_path):
    grid = write_grid(tmp_path)
    root = tmp_path / "root"
    assert run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN)).returncode == 0
    runs = _status(grid, root)
    assert all(r["status"] == "done" and r["stale"] == [] for r in runs.values())
    rec = json.loads((Path(runs["middle x=1"]["artifact_path"]) / "run.json").read_text())
    assert "harness/run_stage.py" in rec["code"]["sources"]

    # the code that made `middle x=1` differs from the code installed now in one file
    led = Ledger(root)
    key = runs["middle x=1"]["key"]
    row = led.conn.execute("SELECT id, message FROM events WHERE run_key=? AND kind='code'", (key,)).fetchone()
    fp = json.loads(row["message"])
    fp["sources"]["harness/ledger.py"] = "0" * 16
    led.conn.execute("UPDATE events SET message=? WHERE id=?", (json.dumps(fp), row["id"]))
    led.close()
    runs = _status(grid, root)
    assert runs["middle x=1"]["stale"] == ["harness/ledger.py changed"]
    assert [label for label, r in runs.items() if r["stale"]] == ["middle x=1"]

    # a plain rerun keeps it and says so; --rerun-stale makes it and its dependent again, nothing else
    before = executions(tmp_path)
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN))
    assert res.returncode == 0 and "--rerun-stale" in res.stderr and executions(tmp_path) == before
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", "--rerun-stale", env=cli_env(**PLUGIN))
    assert res.returncode == 0, res.stderr
    assert executions(tmp_path)[len(before):] == ["middle:1", "last:1"]
    runs = _status(grid, root)
    assert all(r["status"] == "done" and r["stale"] == [] for r in runs.values())
    old = Path(runs["middle x=1"]["artifact_path"])
    assert (old.parent / (old.name + ".stale") / "run.json").is_file()  # the old result is kept aside

    # the report flags stale and truncated runs, from the ledger alone
    led = Ledger(root)
    led.log_metrics(runs["last x=2"]["key"], 3, {"truncated": 1.0})
    led.close()
    assert _status(grid, root)["last x=2"]["truncated"] is True


def test_the_report_lists_stale_and_truncated_runs(tmp_path):
    from types import SimpleNamespace

    from prism_lab.report.flags import render_flags, run_flags

    grid = write_grid(tmp_path, xs=(1,))
    root = tmp_path / "root"
    assert run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN)).returncode == 0
    led = Ledger(root)
    keys = [r["key"] for r in led.conn.execute("SELECT key FROM runs")]
    data = SimpleNamespace(runs=led.get_runs(keys), metrics={k: led.metrics(k) for k in keys})
    flags = run_flags(led, data)
    clean = render_flags(flags)
    assert "## Warnings" not in clean
    [kind] = flags["machines"]  # every run of this sweep ran here
    assert kind["machine"]["cpu"] == cpu_model() and kind["runs"] == len(keys)
    assert f"- {kind['label']}: {len(keys)} runs" in clean.split("## Machines")[1]
    first = next(k for k in keys if data.runs[k].label == "first")
    led.conn.execute("DELETE FROM events WHERE run_key=? AND kind='code'", (first,))
    led.log_metrics(first, 5, {"truncated": 1.0})
    data.metrics = {k: led.metrics(k) for k in keys}
    text = render_flags(run_flags(led, data))
    led.close()
    assert "## Warnings" in text
    assert f"`test_step` first (`{first[:12]}`)" in text.split("Stale runs")[0]  # truncated
    assert "no code fingerprint recorded" in text.split("Stale runs")[1]


def test_cpu_model_and_simd_level_read_the_first_processor_of_proc_cpuinfo():
    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma\n\n"
            "processor\t: 1\nmodel name\t: Other\nflags\t\t: avx512f\n")
    assert cpu_model(info) == "AMD EPYC (family 23, model 1)"
    assert simd_level(info) == "AVX2"
    assert simd_level("flags : sse4_2 avx avx2 avx512f avx512bw\n") == "AVX-512"
    assert cpu_model("model name : Neoverse\n") == "Neoverse"  # no family/model lines (e.g. ARM)
    assert simd_level("") == "unknown"
    import torch  # noqa: F401 - numeric_machine reads torch's dispatch level only from a process that loaded it

    machine = numeric_machine()
    assert machine["torch_cpu_kernels"] == torch.backends.cpu.get_cpu_capability()
    assert machine["cpu"] == cpu_model() and machine["simd"] == simd_level()
    assert machine_label(machine) == f"{cpu_model()}, {machine['arch']} {simd_level()}"
    assert machine_label({**machine, "gpu": "NVIDIA H200"}).endswith(", GPU NVIDIA H200")
    assert machine_label(None).startswith("not recorded")


def test_machines_conflict_when_their_kernels_can_differ():
    a = {"arch": "x86_64", "cpu": "AMD EPYC (family 23, model 1)", "simd": "AVX2"}
    assert not conflicting_machines([a, dict(a), None])  # a run without a record is left out
    assert not conflicting_machines([a, {**a, "gpu": "NVIDIA H200"}])  # the data stage used no GPU
    assert conflicting_machines([a, {**a, "simd": "AVX-512"}])
    assert conflicting_machines([a, {**a, "kernel_env": "MKL_CBWR=COMPATIBLE"}])
    assert conflicting_machines([{**a, "gpu": "NVIDIA H200"}, {**a, "gpu": "NVIDIA A100-SXM4-80GB"}])
    b = {**a, "simd": "AVX-512"}
    assert group_machines([b, a, None, a]) == [
        {"label": "AMD EPYC (family 23, model 1), x86_64 AVX2", "runs": 2, "machine": a},
        {"label": "AMD EPYC (family 23, model 1), x86_64 AVX-512", "runs": 1, "machine": b},
        {"label": "not recorded (made by an older prism-lab)", "runs": 1, "machine": None},
    ]


def test_runs_record_their_machine_and_runs_from_two_kinds_of_machine_are_flagged(tmp_path):
    from types import SimpleNamespace

    from prism_lab.report.flags import render_flags, run_flags

    grid = write_grid(tmp_path, xs=(1,))
    root = tmp_path / "root"
    assert run_cli("sweep", "run", str(grid), "--root", str(root), "-q", env=cli_env(**PLUGIN)).returncode == 0
    runs = _status(grid, root)
    [here] = {json.dumps(r["machine"], sort_keys=True) for r in runs.values()}
    here = json.loads(here)
    assert here["cpu"] == cpu_model() and here["simd"] == simd_level()
    res = run_cli("sweep", "status", str(grid), "--root", str(root), env=cli_env(**PLUGIN))
    assert f"made on {machine_label(here)}: {len(runs)} done run(s)" in " ".join(res.stdout.split())
    assert "more than one kind of machine" not in res.stdout

    # one run made on another kind of machine: status and report say so; nothing is stale
    led = Ledger(root)
    key = runs["last x=1"]["key"]
    row = led.conn.execute("SELECT id, message FROM events WHERE run_key=? AND kind='code'", (key,)).fetchone()
    fp = json.loads(row["message"])
    fp["machine"] = {**fp["machine"], "cpu": "Other CPU (family 25, model 17)", "simd": "AVX-512"}
    led.conn.execute("UPDATE events SET message=? WHERE id=?", (json.dumps(fp), row["id"]))
    keys = [r["key"] for r in led.conn.execute("SELECT key FROM runs")]
    data = SimpleNamespace(runs=led.get_runs(keys), metrics={k: led.metrics(k) for k in keys})
    text = render_flags(run_flags(led, data))
    led.close()
    assert "more than one kind of machine" in text.split("## Machines")[0]
    assert f"- {machine_label(here)}: {len(keys) - 1} runs" in text
    assert f"- Other CPU (family 25, model 17), {here['arch']} AVX-512: 1 run" in text
    runs = _status(grid, root)
    assert runs["last x=1"]["machine"]["simd"] == "AVX-512" and runs["last x=1"]["stale"] == []
    res = run_cli("sweep", "status", str(grid), "--root", str(root), env=cli_env(**PLUGIN))
    assert "more than one kind of machine" in " ".join(res.stdout.split())
