"""The lm-eval wing: the generated text-retention task through lm-eval's real Python API on a tiny
Qwen3-VL checkpoint, fully offline; lm-eval's own tasks are skipped with one line when their data is
not in the Hugging Face cache."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval", reason="the lmeval extra (pip install -e '.[lmeval]') is not installed")

from prism_lab.config.eval import EvalConfig  # noqa: E402
from prism_lab.eval.benchmarks import RETENTION_GROUP, load_benchmark  # noqa: E402
from prism_lab.eval.run import evaluate_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from prism_lab.data.synth.config import SynthConfig
    from prism_lab.data.synth.files import corpus_texts
    from prism_lab.data.synth.generate import generate
    from prism_lab.models import build_tiny_policy, build_tokenizer, save_policy

    d = tmp_path_factory.mktemp("lmeval")
    generate(SynthConfig(n_sft_public=20, n_teacher=5, n_rl=5, n_warmup=4, n_bench=8, n_heldout=4, n_text=12,
                         include_system_prompt=False), d / "data")
    tok = build_tokenizer(list(corpus_texts(d / "data")), vocab_size=400)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    save_policy(model, proc, d / "ckpt")
    return d


def test_spec_is_in_the_retention_group():
    spec = load_benchmark("synth-text")
    assert spec.kind == "lmeval" and spec.group == RETENTION_GROUP
    assert (spec.spec_dir / spec.lmeval_task).is_file()
    assert load_benchmark("synth-reasoning").group != RETENTION_GROUP


def test_synth_text_runs_offline_and_hub_tasks_are_skipped(setup, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    d = setup
    logs: list[str] = []
    kw = dict(bench_dir=d / "data" / "bench", cache_dir=d / "cache", checkpoint_key="ckpt-test", log=logs.append,
              progress=False)
    res = evaluate_checkpoint(d / "ckpt", ["synth-text", "arc_easy", "synth-reasoning"],
                              EvalConfig(limit=3, max_new_tokens=8), out_dir=d / "out", **kw)
    b = res["benchmarks"]["synth-text"]
    assert b["n"] == 3 and b["group"] == RETENTION_GROUP  # `limit` (first N items) applies to lm-eval tasks too
    items = res["items"]["synth-text"]
    assert sorted(items) == ["0", "1", "2"] and set(items.values()) <= {0.0, 1.0}
    assert b["accuracy"] == pytest.approx(sum(items.values()) / 3)
    assert b["info"]["prism_synth_text"]["value"] == pytest.approx(b["accuracy"])  # lm-eval's own aggregate
    assert res["metrics"]["eval/synth-text/accuracy"] == pytest.approx(b["accuracy"])
    assert "eval/synth-text/format_rate" not in res["metrics"]  # not a format-judged benchmark
    # the paper's Avg is over the vision benchmarks only; the retention group has its own
    assert res["metrics"]["eval/avg/accuracy"] == pytest.approx(res["benchmarks"]["synth-reasoning"]["accuracy"])
    assert res["metrics"]["eval/avg_retention/accuracy"] == pytest.approx(b["accuracy"])
    assert "arc_easy" in res["skipped"] and "ai2_arc" in res["skipped"]["arc_easy"]
    assert [m for m in logs if m.startswith("eval arc_easy: skipped")]
    preds = [json.loads(x) for x in (d / "out" / "predictions" / "synth-text.jsonl").read_text().splitlines()]
    assert len(preds) == 3 and all(p["prediction"].startswith("choice ") for p in preds)

    again = evaluate_checkpoint(d / "ckpt", ["synth-text"], EvalConfig(limit=3, max_new_tokens=8), **kw)
    assert again["benchmarks"]["synth-text"]["cache_hit"] and again["items"]["synth-text"] == items
    full = evaluate_checkpoint(d / "ckpt", ["synth-text"], EvalConfig(), **kw)
    assert full["benchmarks"]["synth-text"]["n"] == 12 and not full["benchmarks"]["synth-text"]["cache_hit"]


def test_missing_data_file_is_a_skip_not_a_crash(setup, tmp_path):
    res = evaluate_checkpoint(setup / "ckpt", ["synth-text"], EvalConfig(), bench_dir=tmp_path, cache_dir=None,
                              checkpoint_key="k", progress=False)
    assert "synth-text.jsonl" in res["skipped"]["synth-text"] and res["benchmarks"] == {}


def test_a_task_yaml_never_builds_lm_evals_full_task_index(setup, tmp_path, monkeypatch):
    """simple_evaluate builds its own full index (~15,000 tasks, seconds) unless it is handed one: the
    backend hands it the YAML-only index that loaded the task."""
    from lm_eval.tasks import TaskManager

    from prism_lab.eval import lmeval

    built: list[bool] = []
    init = TaskManager.__init__

    def counting_init(self, *args, **kwargs):
        built.append(kwargs.get("include_defaults", True))
        init(self, *args, **kwargs)

    monkeypatch.setattr(TaskManager, "__init__", counting_init)
    lmeval._task_manager.cache_clear()
    res = evaluate_checkpoint(setup / "ckpt", ["synth-text"], EvalConfig(limit=2), bench_dir=setup / "data" / "bench",
                              cache_dir=None, checkpoint_key="k-index", progress=False)
    lmeval._task_manager.cache_clear()
    assert res["benchmarks"]["synth-text"]["n"] == 2
    assert built == [False]
