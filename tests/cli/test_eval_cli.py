"""`prism-lab eval` outside sweeps: same ledger record as the eval stage, cached on a second call."""

from __future__ import annotations

import json

import pytest

from prism_lab.eval.fingerprint import recorded_fingerprints
from prism_lab.harness.ledger import Ledger
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny_ckpt_and_bench(tmp_path_factory):
    from prism_lab.data.synth.config import SynthConfig
    from prism_lab.data.synth.files import corpus_texts
    from prism_lab.data.synth.generate import generate
    from prism_lab.models import build_tiny_policy, build_tokenizer, save_policy

    d = tmp_path_factory.mktemp("evalcli")
    generate(SynthConfig(n_sft_public=20, n_teacher=5, n_rl=5, n_warmup=4, n_bench=8, include_system_prompt=False),
             d / "data")
    tok = build_tokenizer(list(corpus_texts(d / "data")), vocab_size=400)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    save_policy(model, proc, d / "ckpt")
    return d


def test_eval_command_records_an_eval_run_and_reuses_it(tiny_ckpt_and_bench):
    d = tiny_ckpt_and_bench
    args = ["eval", str(d / "ckpt"), "-b", "synth-reasoning", "-b", "synth-hallusion", "--bench-dir",
            str(d / "data" / "bench"), "--root", str(d / "root"), "--limit", "4", "--max-new-tokens", "16",
            "--format", "json"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)  # exactly one JSON document; the run's log lines went to stderr
    assert "started" in first.stderr
    led = Ledger(d / "root")
    row = led.get_run(out["run_key"])
    assert row.kind == "eval" and row.status == "done"
    assert row.config["benchmarks"] == ["synth-reasoning", "synth-hallusion"]
    ckpt_row = led.get_run(row.inputs["checkpoint"])
    assert ckpt_row.kind == "checkpoint" and ckpt_row.status == "done"
    metrics = led.last_metrics(out["run_key"])
    assert metrics["eval/synth-reasoning/n"] == 4 and "eval/avg/accuracy" in metrics
    assert out["metrics"] == dict(sorted(metrics.items()))
    run_dir = d / "root" / "runs" / "eval" / out["run_key"][:16]
    assert (run_dir / "predictions" / "synth-reasoning.jsonl").is_file()
    # the evaluation fingerprint of each benchmark: in the ledger, run.json and results.json alike
    prints = recorded_fingerprints(led, [out["run_key"]])[out["run_key"]]
    assert set(prints) == {"synth-reasoning", "synth-hallusion"}
    fields = prints["synth-reasoning"]["fields"]
    assert fields["decoding"]["max_new_tokens"] == 16 and fields["decoding"]["limit"] == 4
    assert fields["backend"] == "builtin" and fields["engine"] == "hf" and fields["judge"] is None
    assert json.loads((run_dir / "run.json").read_text())["eval_fingerprints"] == prints
    results = json.loads((run_dir / "results.json").read_text())
    assert {b: e["fingerprint"] for b, e in results["benchmarks"].items()} == prints
    led.close()
    second = run_cli(*args)
    assert second.returncode == 0
    assert json.loads(second.stdout)["run_key"] == out["run_key"]
    assert "started" not in second.stderr  # nothing re-run
    table = run_cli(*args[:-2])
    assert table.returncode == 0 and f"eval run {out['run_key'][:12]}" in table.stdout
    assert "eval/synth-reasoning/accuracy" in table.stdout


def test_eval_command_errors_are_one_line(tiny_ckpt_and_bench, tmp_path):
    d = tiny_ckpt_and_bench
    res = run_cli("eval", str(tmp_path / "nope"), "-b", "synth-reasoning", "--bench-dir", str(d / "data" / "bench"),
                  "--root", str(tmp_path / "r"))
    assert res.returncode == 2 and "no such checkpoint directory" in res.stderr
    res = run_cli("eval", str(d / "ckpt"), "-b", "no-such-bench", "--bench-dir", str(d / "data" / "bench"),
                  "--root", str(tmp_path / "r"))
    assert res.returncode == 2 and "unknown benchmark 'no-such-bench'" in res.stderr
    assert len([l for l in res.stderr.splitlines() if l.strip()]) == 1
