"""`sweep status` and `report` flag a benchmark whose eval runs were made under different evaluation fingerprints
(issue #34 item 4), and the report shows each benchmark's fingerprint.

The ledger is built by hand from the real plan of a tiny grid (no stage runs): every run done, and every eval run
recording what the eval stage records, the fingerprints the real builder makes from the run's own eval config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml
from typer.testing import CliRunner

from prism_lab.cli import app
from prism_lab.config.eval import EvalConfig
from prism_lab.eval.backends import resolve_settings
from prism_lab.eval.benchmarks import load_benchmark
from prism_lab.eval.builtin import BuiltinBackend
from prism_lab.eval.fingerprint import FINGERPRINT_EVENT, benchmark_fingerprint
from prism_lab.harness import planning
from prism_lab.harness.ledger import Ledger
from prism_lab.prompts import Prompting
from tests.conftest import REPO


def _sweep(tmp_path: Path, name: str, **axes) -> tuple[Path, Path]:
    """A smoke-grid sweep (extra ``axes``) whose runs are all done; returns (grid file, root)."""
    for f in ("smoke.yaml", "toy.yaml"):
        shutil.copy(REPO / "experiments" / f, tmp_path / f)
    grid = tmp_path / f"{name}.yaml"
    grid.write_text(yaml.safe_dump({"extends": "smoke.yaml", "name": name, "axes": axes}))
    plan = planning.build_plan(planning.load_grid(grid))
    root = tmp_path / f"root-{name}"
    ledger = Ledger(root)
    ledger.record_plan(plan)
    for run in plan.runs.values():
        if run.kind == "eval":
            cfg = EvalConfig.model_validate(run.config)
            prints = {}
            for b in cfg.benchmarks:
                spec = load_benchmark(b)
                prints[b] = benchmark_fingerprint(spec, "d" * 64, Prompting(), resolve_settings(spec, cfg),
                                                  BuiltinBackend())
            ledger.log_metrics(run.key, 0, {**{f"eval/{b}/accuracy": 0.5 for b in cfg.benchmarks},
                                            "eval/avg/accuracy": 0.5})
            ledger.event(FINGERPRINT_EVENT, json.dumps(prints), run_key=run.key)
            for b in cfg.benchmarks:  # 4 items: all right with 16 new tokens, only the first with fewer
                ledger.log_item_scores(run.key, b, {f"i{i}": float(i == 0 or cfg.max_new_tokens == 16)
                                                    for i in range(4)})
        ledger.mark_done(run.key, str(tmp_path / "art" / run.key[:16]))
    ledger.close()
    return grid, root


def _warnings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("warning: benchmark ")]


def test_status_and_report_flag_a_benchmark_evaluated_under_two_fingerprints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    grid, root = _sweep(tmp_path, "mixed", **{"eval.max_new_tokens": [8, 16]})
    benches = planning.load_grid(grid).spec.benchmarks

    res = runner.invoke(app, ["sweep", "status", str(grid), "--root", str(root)])
    assert res.exit_code == 0, res.output
    lines = _warnings(res.stderr)
    assert len(lines) == len(benches), res.stderr  # one line per benchmark, each naming it and the field
    for bench, line in zip(benches, lines):
        assert f"benchmark {bench}:" in line and "its 10 eval runs" in line
        assert "decoding.max_new_tokens 8 vs 16" in line or "decoding.max_new_tokens 16 vs 8" in line

    res = runner.invoke(app, ["report", str(grid), "--root", str(root), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert _warnings(res.stderr) == lines
    text = (tmp_path / "out" / "report.md").read_text()
    section = text[text.index("## Evaluation fingerprints"):].split("\n## ")[0]
    rows = [r for r in section.splitlines() if r.startswith(f"| {benches[0]} |")]
    assert len(rows) == 2 and "max_new_tokens 8" in "".join(rows) and "max_new_tokens 16" in "".join(rows)
    assert all("(5 of 10 runs)" in r for r in rows)  # per value: eval of base, sft, align and 2 rl checkpoints
    warnings = text[text.index("## Warnings"):]
    assert all(line.removeprefix("warning: ") in warnings for line in lines)
    # the protocol table: the 5 checkpoints (base, sft, align, 2 rl) each scored under both, 16 − 8 per item
    # (0, 1, 1, 1) -> +75 points; the reference is the smaller hash (5 runs each)
    section = text[text.index("## Evaluation protocols"):].split("\n## ")[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and "Benchmark" not in r and "---" not in r]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == benches
    for r in rows:
        assert "decoding.max_new_tokens" in r and "| 5 | 4 |" in r and ("+75.0" in r or "-75.0" in r)


def test_one_protocol_is_shown_and_not_flagged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    grid, root = _sweep(tmp_path, "same")
    res = runner.invoke(app, ["sweep", "status", str(grid), "--root", str(root)])
    assert res.exit_code == 0 and _warnings(res.stderr) == [], res.stderr
    res = runner.invoke(app, ["report", str(grid), "--root", str(root), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0 and _warnings(res.stderr) == [], res.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    section = text[text.index("## Evaluation fingerprints"):].split("\n## ")[0]
    bench = planning.load_grid(grid).spec.benchmarks[0]
    (row,) = [r for r in section.splitlines() if r.startswith(f"| {bench} |")]
    assert "## Evaluation protocols" not in text
    assert "runs)" not in row and "builtin" in row and "| hf |" in row and "max_new_tokens 96, greedy, limit 8" in row
