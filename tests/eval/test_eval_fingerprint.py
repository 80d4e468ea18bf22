"""The evaluation fingerprint (issue #34 item 4): built by a pure function, compared across runs, and the part of
it the eval stage's content key adds (the benchmark definitions, the external backends' versions)."""

from __future__ import annotations

import importlib.metadata
import shutil

import yaml

from prism_lab.eval.backends import resolve_settings
from prism_lab.eval.benchmarks import DEFAULT_BENCHMARK_DIR, load_benchmark
from prism_lab.eval.builtin import BuiltinBackend
from prism_lab.eval.fingerprint import (
    benchmark_fingerprint,
    eval_fingerprint,
    mixed_fingerprints,
    mixed_warning,
    protocol_key,
    spec_sha256,
)
from prism_lab.config.eval import EvalConfig
from prism_lab.prompts import Prompting


def _fp(**over):
    fields = {"benchmark_sha256": "b" * 64, "data_sha256": "d" * 64, "prompt_template": {"system_prompt": True},
              "backend": "builtin", "backend_version": "0.1.0", "decoding": {"max_new_tokens": 8, "temperature": 0.0},
              "engine": "hf"}
    return eval_fingerprint(**{**fields, **over})


def test_the_fingerprint_is_a_short_hash_of_its_fields():
    a, b = _fp(), _fp()
    assert a == b and len(a["hash"]) == 12
    assert a["fields"]["judge"] is None and a["fields"]["judge_version"] is None  # the judge's field is there
    for change in ({"decoding": {"max_new_tokens": 16, "temperature": 0.0}}, {"engine": "vllm"},
                   {"backend_version": "0.2.0"}, {"judge": "Qwen2.5-32B-Instruct"}, {"data_sha256": "e" * 64},
                   {"prompt_template": {"system_prompt": False}}):
        assert _fp(**change)["hash"] != a["hash"], change


def test_mixed_fingerprints_name_the_benchmark_and_the_fields_that_differ():
    same = {"synth-reasoning": _fp()}
    per_run = {"r1": {"synth-perception": _fp(), **same}, "r2": {"synth-perception": _fp(), **same},
               "r3": {"synth-perception": _fp(decoding={"max_new_tokens": 16, "temperature": 0.0}), **same}}
    mixed = mixed_fingerprints(per_run)
    assert [m.benchmark for m in mixed] == ["synth-perception"]
    assert mixed[0].runs == 3 and mixed[0].fields == {"decoding.max_new_tokens": (8, 16)}
    line = mixed_warning(mixed[0])
    assert "\n" not in line and "synth-perception" in line and "decoding.max_new_tokens 8 vs 16" in line
    assert all(h in line for h in mixed[0].hashes)
    assert mixed_fingerprints({"r1": same, "r2": same}) == []


def test_a_builtin_benchmark_fingerprint_from_what_the_stage_resolves():
    spec = load_benchmark("synth-perception")
    settings = resolve_settings(spec, EvalConfig(max_new_tokens=5))
    fp = benchmark_fingerprint(spec, "d" * 64, Prompting(system_prompt=False), settings, BuiltinBackend())
    f = fp["fields"]
    assert f["benchmark_sha256"] == spec_sha256(spec) and f["data_sha256"] == "d" * 64
    assert f["backend"] == "builtin" and f["backend_version"] == importlib.metadata.version("prism-lab")
    assert f["prompt_template"] == {"system_prompt": False, "yesno_instruction": True}
    assert f["decoding"]["max_new_tokens"] == 5 and f["engine"] == "hf"  # no GPU in CI: auto is hf
    assert f["judge"] is None


def test_protocol_key_follows_the_benchmark_definition(tmp_path):
    for name in ("synth-perception.yaml", "synth-reasoning.yaml"):
        shutil.copy(DEFAULT_BENCHMARK_DIR / name, tmp_path / name)
    names = ["synth-perception", "synth-reasoning"]
    before = protocol_key(names, "builtin", [tmp_path])
    assert before == protocol_key(names, "builtin", [tmp_path])
    path = tmp_path / "synth-perception.yaml"
    spec = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**spec, "max_new_tokens": spec["max_new_tokens"] + 1}))
    assert protocol_key(names, "builtin", [tmp_path]) != before
    path.write_text(yaml.safe_dump(spec) + "# a comment changes nothing\n")
    assert protocol_key(names, "builtin", [tmp_path]) == before


def test_benchmark_hashes_do_not_move_when_a_field_is_added():
    """A benchmark's hash enters its eval runs' keys: a field added to every benchmark definition (here lmms-eval's
    task and dataset) must leave the hashes of the benchmarks that do not set it as they were, or every recorded
    eval run would be rerun. The values are the hashes before those fields existed."""
    from prism_lab.eval.benchmarks import all_benchmarks
    from prism_lab.eval.fingerprint import spec_sha256
    from tests.conftest import REPO

    specs = all_benchmarks([REPO / "benchmarks"])
    assert {n: spec_sha256(specs[n])[:16] for n in ("synth-reasoning", "gsm8k", "MMStar")} == {
        "synth-reasoning": "91e4dc5d47192cf1", "gsm8k": "ea767b6c480d18c0", "MMStar": "2876000c9580f94a"}
