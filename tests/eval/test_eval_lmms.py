"""The lmms_eval backend's core-side parts (no lmms-eval needed): the paper's 7 tasks as `kind: lmms` benchmarks,
their validation, the skip when a task's dataset is not local, the backend's interpreter lookup and its place in the
evaluation fingerprint. The lmms-eval runs themselves (the three-backend parity tests) are in
tests/eval/test_eval_vlmeval.py, run in the external backends' virtualenv."""

from __future__ import annotations


import pytest

from prism_lab.errors import ConfigError
from prism_lab.eval.benchmarks import BenchmarkSpec, all_benchmarks

#: The paper's tasks as the PRISM eval script names them (docs/prism_method.md §8) -> (paper column, max_new).
PAPER_TASKS = {
    "mathvista_testmini": ("MathVista", 16384), "mathverse_testmini": ("MathVerse", 16384),
    "mathvision_testmini": ("MathVision", 24576), "wemath_testmini_reasoning": ("WeMath", 49152),
    "mmmu_val": ("MMMU", 8192), "mmmu_pro": ("MMMU-Pro", 8192), "hallusion_bench_image": ("HalluBench", 8192),
}


def test_paper_tasks_declared_for_lmms_eval_with_the_papers_decoding():
    specs = all_benchmarks()
    assert {n for n, s in specs.items() if s.kind == "lmms"} == set(PAPER_TASKS)
    for name, (column, max_new) in PAPER_TASKS.items():
        s = specs[name]
        assert (s.lmms_task, s.source, s.file, s.paper_column, s.max_new_tokens) == (name, "lmms", None, column, max_new)
        assert (s.temperature, s.top_p, s.top_k, s.do_sample) == (1.0, 0.7, -1, True)
        assert s.lmms_dataset and s.is_task and s.group == "vision"


@pytest.mark.parametrize("fields,needle", [
    ({"lmms_dataset": "a/b"}, "lmms_task"), ({"lmms_task": "t"}, "lmms_dataset"),
    ({"lmms_task": "t", "lmms_dataset": "a/b", "file": "x.tsv"}, "remove `file`"),
])
def test_lmms_spec_needs_task_and_dataset_and_no_file(fields, needle):
    with pytest.raises(ValueError, match=needle):
        BenchmarkSpec(name="x", kind="lmms", source="lmms", **fields)


def test_paper_task_without_local_dataset_is_skipped_before_any_model(tmp_path, monkeypatch):
    """No dataset in the HF cache -> the benchmark is skipped with one line; no worker, no model (the checkpoint
    directory is empty), and no lmms-eval needed."""
    from prism_lab.eval.run import evaluate_checkpoint

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("PRISM_LMMS_EVAL_PYTHON", str(tmp_path / "no-python"))  # would fail if a worker started
    (tmp_path / "ckpt").mkdir()
    res = evaluate_checkpoint(tmp_path / "ckpt", ["mathvista_testmini"], None, bench_dir=None, cache_dir=None,
                              checkpoint_key="k")
    line = res["skipped"]["mathvista_testmini"]
    assert "\n" not in line and "AI4Math/MathVista" in line and str(tmp_path / "hf" / "hub") in line
    assert res["metrics"] == {}


def test_lmms_python_lookup_is_one_line(tmp_path, monkeypatch):
    from prism_lab.eval.lmms.backend import find_lmms_python

    monkeypatch.setenv("PRISM_LMMS_EVAL_PYTHON", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="PRISM_LMMS_EVAL_PYTHON=.*does not exist") as e:
        find_lmms_python()
    assert "\n" not in str(e.value)
    monkeypatch.setenv("PRISM_LMMS_EVAL_PYTHON", "/bin/sh")  # a given interpreter is taken as it is
    assert find_lmms_python() == "/bin/sh"


def test_protocol_key_carries_lmms_evals_version(monkeypatch):
    """A `kind: lmms` benchmark's protocol names lmms-eval whatever the configured backend; the TSV benchmarks
    name it with `--backend lmms_eval` only."""
    from prism_lab.eval import fingerprint

    seen = []
    monkeypatch.setattr(fingerprint, "backend_version", lambda name: seen.append(name) or f"v-{name}")
    fingerprint.protocol_key(["mathvista_testmini", "synth-perception"], "builtin")
    assert seen == ["lmms_eval"]
    seen.clear()
    fingerprint.protocol_key(["synth-perception"], "lmms_eval")
    assert seen == ["lmms_eval"]
