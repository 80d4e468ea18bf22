"""The smoke grid with every trainer sharded over 2 gloo processes, through the executor (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_env, copy_root, run_cli

# the session's smoke run (tests/conftest.py `smoke_root`) and the reruns take minutes on 2 cores: past the
# suite's default 600 s per test, which would also count the shared fixture's set-up
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_sweep_runs_sft_align_and_rl_stages_with_two_processes(tmp_path, smoke_root):
    """The smoke grid with every trainer sharded over 2 processes. It starts from a copy of the session's smoke
    root: the data and base runs do not shard, so their keys are the same and they are reused, not rerun."""
    grid = tmp_path / "smoke2.yaml"
    grid.write_text(f"extends: {REPO / 'experiments' / 'smoke.yaml'}\nname: smoke2\n"
                    "stages:\n  sft:\n    resources: {processes: 2}\n  rl:\n    resources: {processes: 2}\n"
                    "  disc_warmup:\n    resources: {processes: 2}\n  align:\n    resources: {processes: 2}\n")
    root = copy_root(smoke_root, tmp_path / "root")
    before = {d for kind in ("data", "base") for d in (root / "runs" / kind).iterdir()}
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", "--stages", "base,sft,disc_warmup,align,rl",
                  env=cli_env(), timeout=1200)
    assert res.returncode == 0, res.stderr
    status = run_cli("sweep", "status", str(grid), "--root", str(root), "--format", "json")
    runs: dict[str, list[Path]] = {}
    for r in json.loads(status.stdout):
        if r["status"] == "done":
            runs.setdefault(r["kind"], []).append(root / r["artifact_path"])
    assert {d for kind in ("data", "base") for d in (root / "runs" / kind).iterdir()} == before  # reused, not rerun
    (disc_dir,) = runs["disc_warmup"]
    assert json.loads((disc_dir / "run.json").read_text())["summary"]["processes"] == 2
    assert (disc_dir / "discriminator" / "score_head.safetensors").is_file()
    from prism_lab.models import load_policy
    from prism_lab.models.discriminator import load_discriminator

    (sft_dir,) = runs["sft"]
    _, processor = load_policy(sft_dir / "model")
    disc = load_discriminator(disc_dir / "discriminator", policy_processor=processor)  # the gathered files load
    assert disc.is_moe and sum(p.numel() for p in disc.parameters()) > 0
    (align_dir,) = runs["align"]
    aligned = load_discriminator(align_dir / "discriminator", policy_processor=processor)  # rank 0's gathered files
    assert aligned.is_moe
    for kind in ("sft", "align", "rl"):
        for run_dir in runs[kind]:
            record = json.loads((run_dir / "run.json").read_text())
            assert record["summary"]["processes"] == 2
            assert (run_dir / "model" / "model.safetensors").is_file() and not (run_dir / "resume").exists()
    assert len(runs["rl"]) == 2  # with and without alignment
