"""Benchmark registry loaded from benchmarks/*.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism_lab.errors import ConfigError
from prism_lab.eval.benchmarks import (
    DEFAULT_BENCHMARK_DIR,
    BenchmarkSpec,
    all_benchmarks,
    list_benchmarks,
    load_benchmark,
)

SYNTH = ("synth-hallusion", "synth-perception", "synth-reasoning")


def test_repo_synth_benchmarks():
    assert DEFAULT_BENCHMARK_DIR.name == "benchmarks" and DEFAULT_BENCHMARK_DIR.is_dir()
    names = list_benchmarks()
    assert set(SYNTH) <= set(names) and names == sorted(names)
    kinds = {"synth-perception": "open", "synth-reasoning": "open", "synth-hallusion": "yesno"}
    for name in SYNTH:
        spec = load_benchmark(name)
        assert spec.name == name and spec.source == "synth" and spec.kind == kinds[name]
        assert spec.file == f"{name}.tsv" and spec.description
        assert spec.do_sample is False and spec.max_new_tokens == 96
        assert spec.generation_kwargs() == {"max_new_tokens": 96, "do_sample": False}
        assert spec.tsv_path("/data/x") == Path("/data/x/bench") / spec.file


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError) as e:
        load_benchmark("mathvista-nope")
    msg = str(e.value)
    assert "mathvista-nope" in msg and all(n in msg for n in SYNTH)


def test_paper_defaults_and_sampling_kwargs():
    spec = BenchmarkSpec(name="HB", kind="yesno", file="HallusionBench.tsv", source="vlmevalkit",
                         vlmeval_name="HallusionBench")
    assert (spec.temperature, spec.top_p, spec.top_k, spec.do_sample) == (1.0, 0.7, -1, True)
    assert spec.generation_kwargs()["top_k"] == 0 and spec.generation_kwargs()["top_p"] == 0.7
    assert spec.tsv_path(lmu_root="/lmu") == Path("/lmu/HallusionBench.tsv")
    with pytest.raises(ConfigError):
        load_benchmark("synth-reasoning").model_copy().tsv_path(None)


def test_custom_dirs_and_errors(tmp_path):
    good = "name: mine\nkind: mcq\nfile: mine.tsv\nsource: vlmevalkit\n"
    (tmp_path / "mine.yaml").write_text(good)
    assert list_benchmarks([tmp_path]) == ["mine"]
    assert load_benchmark("mine", search_dirs=[tmp_path]).kind == "mcq"
    assert set(all_benchmarks([tmp_path, DEFAULT_BENCHMARK_DIR])) >= {"mine", *SYNTH}

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b.yaml").write_text("name: b\nkind: essay\nfile: b.tsv\nsource: synth\n")
    with pytest.raises(ConfigError, match=r"b\.yaml.*'kind'"):
        list_benchmarks([bad])
    (bad / "b.yaml").write_text(good + "temprature: 0.5\n")
    with pytest.raises(ConfigError, match=r"b\.yaml.*'temprature'.*unknown"):
        list_benchmarks([bad])
    (bad / "b.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"b\.yaml.*invalid YAML"):
        list_benchmarks([bad])
    (bad / "b.yaml").write_text(good)
    (bad / "c.yaml").write_text(good)
    with pytest.raises(ConfigError, match="already defined"):
        list_benchmarks([bad])
