"""Built-in evaluation: prompts, rule scoring, per-row predictions, results, the prediction cache, the
eval stage runner (prism_lab.eval.builtin / backends / predictions / run, prism_lab.stages.eval)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import prism_lab.models as models_pkg
import prism_lab.rollout as rollout_mod
from prism_lab.config.eval import EvalConfig
from prism_lab.data.bench_tsv import read_benchmark_tsv, write_benchmark_tsv
from prism_lab.data.catalog import DataCatalog
from prism_lab.data.images import image_to_base64
from prism_lab.errors import ConfigError, DataError
from prism_lab.eval.backends import (
    EVAL_BACKENDS,
    BenchmarkResult,
    GenerationSettings,
    Prompting,
    get_backend_class,
    resolve_settings,
    summarize_rows,
)
from prism_lab.eval.benchmarks import BenchmarkSpec
from prism_lab.eval.builtin import (
    BuiltinBackend,
    build_prompt,
    judge_answer,
    prompt_text,
    score_response,
)
from prism_lab.eval.predictions import PredictionCache, cache_key, read_jsonl
from prism_lab.eval.run import evaluate_checkpoint
from prism_lab.models.loader import build_tiny_policy, save_policy
from prism_lab.models.tokenizer import build_tokenizer
from prism_lab.prompts import SYSTEM_PROMPT, format_response
from prism_lab.rollout import Rollout

COLUMNS = ["index", "image", "question", "answer", "A", "B", "C", "D", "category"]


def _spec(name: str, kind: str, **kw) -> BenchmarkSpec:
    base = dict(max_new_tokens=6, do_sample=False, temperature=0.0, top_p=1.0)
    base.update(kw)
    return BenchmarkSpec(name=name, kind=kind, file=f"{name}.tsv", source="synth", **base)


SPECS = {
    "t-mcq": _spec("t-mcq", "mcq"),
    "t-yesno": _spec("t-yesno", "yesno"),
    "t-open": _spec("t-open", "open"),
}


def _img(seed: int) -> str:
    rng = np.random.default_rng(seed)
    return image_to_base64(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bench")
    write_benchmark_tsv(d / "t-mcq.tsv", [
        {"index": 0, "image": _img(0), "question": "What colour is the square?", "answer": "B",
         "A": "red", "B": "blue", "C": "green", "D": "yellow", "category": "colour"},
        {"index": 1, "image": "0", "question": "How many circles are there?", "answer": "C",
         "A": "1", "B": "2", "C": "3", "D": "4", "category": "count"},
        {"index": 2, "image": _img(2), "question": "What shape is the red one?", "answer": "A",
         "A": "circle", "B": "square", "C": "", "D": "", "category": "shape"},
    ], COLUMNS)
    write_benchmark_tsv(d / "t-yesno.tsv", [
        {"index": 10, "image": _img(10), "question": "Is there a blue triangle?", "answer": "Yes"},
        {"index": 11, "image": _img(11), "question": "Is there a red circle?", "answer": "No"},
    ], ["index", "image", "question", "answer"])
    write_benchmark_tsv(d / "t-open.tsv", [
        {"index": 20, "image": _img(20), "question": "How many red circles are there?", "answer": "3"},
        {"index": 21, "image": _img(21), "question": "How many shapes plus two?", "answer": "7"},
    ], ["index", "image", "question", "answer"])
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    corpus = [SYSTEM_PROMPT, *(f"How many red circles are there? Is there a blue square? {i}" for i in range(50)),
              *(format_response(f"- {i % 5} red circles", f"{i} plus 2", str(i)) for i in range(50))]
    tok = build_tokenizer(corpus, vocab_size=400)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    return save_policy(model, proc, tmp_path_factory.mktemp("ckpt") / "model")


class Counter:
    """Wraps make_engine / load_policy to count calls (the real functions still run)."""

    def __init__(self, monkeypatch) -> None:
        self.engines = 0
        self.loads = 0
        real_make, real_load = rollout_mod.make_engine, models_pkg.load_policy

        def make_engine(*a, **k):
            self.engines += 1
            return real_make(*a, **k)

        def load_policy(*a, **k):
            self.loads += 1
            return real_load(*a, **k)

        monkeypatch.setattr(rollout_mod, "make_engine", make_engine)
        monkeypatch.setattr(models_pkg, "load_policy", load_policy)


class FakeEngine:
    """Returns fixed texts by question (substring match); records the prompts it saw."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[dict] = []
        self.prompts = []

    def generate(self, prompts, *, n=1, max_new_tokens, temperature=1.0, top_p=1.0, do_sample=True, seed=None,
                 return_logprobs=False, batch_size=16):
        self.calls.append(dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               do_sample=do_sample, seed=seed, batch_size=batch_size))
        self.prompts.extend(prompts)
        out = []
        for i, p in enumerate(prompts):
            user = p.messages[-1]["content"][1]["text"]
            text = next(t for q, t in self.answers.items() if q in user)
            out.append(Rollout(i, list(range(len(text.split()) + 1)), text, None, "stop"))
        return out


def _fake(monkeypatch, answers: dict[str, str]) -> FakeEngine:
    eng = FakeEngine(answers)
    monkeypatch.setattr(rollout_mod, "make_engine", lambda *a, **k: eng)
    monkeypatch.setattr(models_pkg, "load_policy", lambda *a, **k: (None, None))
    return eng


def _ok(answer: str) -> str:
    return format_response("- a picture", "look and count", answer)


# --------------------------------------------------------------------------------------------- e2e
def test_end_to_end_real_model_files_and_metrics(checkpoint, bench_dir, tmp_path, monkeypatch):
    counter = Counter(monkeypatch)
    out = tmp_path / "out"
    cfg = EvalConfig(benchmarks=list(SPECS), batch_size=2, threads=1)
    res = evaluate_checkpoint(checkpoint, list(SPECS.values()), cfg, bench_dir=bench_dir,
                              cache_dir=tmp_path / "cache", checkpoint_key="ck1", out_dir=out)
    assert counter.loads == 1 and counter.engines == 1  # one model load for all benchmarks
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["checkpoint_key"] == "ck1" and on_disk["backend"] == "builtin"
    accs = []
    for name in SPECS:
        rows = read_jsonl(out / "predictions" / f"{name}.jsonl")
        items = read_benchmark_tsv(bench_dir / f"{name}.tsv")
        assert [r["index"] for r in rows] == [it.index for it in items]
        for r in rows:
            assert {"index", "question", "answer", "prediction", "extracted", "correct", "format_valid",
                    "n_tokens", "finish_reason"} <= set(r)
            assert 1 <= r["n_tokens"] <= 6 and r["finish_reason"] in ("stop", "length")
            # the stored flags agree with re-scoring the stored text
            again = score_response(r["prediction"], r["answer"], kind=SPECS[name].kind,
                                   options=next(it.options for it in items if it.index == r["index"]))
            assert again["correct"] == r["correct"] and again["format_valid"] == r["format_valid"]
        acc = sum(r["correct"] for r in rows) / len(rows)
        fmt = sum(r["format_valid"] for r in rows) / len(rows)
        b = on_disk["benchmarks"][name]
        assert b["accuracy"] == pytest.approx(acc) and b["format_rate"] == pytest.approx(fmt)
        assert b["n"] == len(rows) and b["cache_hit"] is False
        assert b["mean_response_tokens"] == pytest.approx(sum(r["n_tokens"] for r in rows) / len(rows))
        assert b["settings"] == {"max_new_tokens": 6, "do_sample": False, "temperature": 0.0, "top_p": 1.0,
                                 "top_k": -1, "seed": 0, "limit": None}
        assert res["metrics"][f"eval/{name}/accuracy"] == pytest.approx(acc)
        assert res["metrics"][f"eval/{name}/format_rate"] == pytest.approx(fmt)
        assert res["metrics"][f"eval/{name}/n"] == len(rows)
        accs.append(acc)
    assert res["metrics"]["eval/avg/accuracy"] == pytest.approx(sum(accs) / len(accs))

    # Second call: every benchmark from the cache, no model load, no engine, identical results.
    counter2 = Counter(monkeypatch)
    res2 = evaluate_checkpoint(checkpoint, list(SPECS.values()), cfg, bench_dir=bench_dir,
                               cache_dir=tmp_path / "cache", checkpoint_key="ck1", out_dir=tmp_path / "out2")
    assert counter2.engines == 0 and counter2.loads == 0
    assert all(b["cache_hit"] for b in res2["benchmarks"].values())
    assert res2["metrics"] == res["metrics"]
    for name in SPECS:
        assert read_jsonl(tmp_path / "out2" / "predictions" / f"{name}.jsonl") == \
            read_jsonl(out / "predictions" / f"{name}.jsonl")

    # A changed generation setting (max_new_tokens override) misses; the other checkpoint key misses too.
    counter3 = Counter(monkeypatch)
    res3 = evaluate_checkpoint(checkpoint, [SPECS["t-open"]], cfg.model_copy(update={"max_new_tokens": 3}),
                               bench_dir=bench_dir, cache_dir=tmp_path / "cache", checkpoint_key="ck1")
    assert counter3.engines == 1 and res3["benchmarks"]["t-open"]["cache_hit"] is False
    assert res3["benchmarks"]["t-open"]["mean_response_tokens"] <= 3
    res4 = evaluate_checkpoint(checkpoint, [SPECS["t-open"]], cfg, bench_dir=bench_dir,
                               cache_dir=tmp_path / "cache", checkpoint_key="ck2")
    assert counter3.engines == 2 and res4["benchmarks"]["t-open"]["cache_hit"] is False


# --------------------------------------------------------------------------------------------- scoring
def test_scoring_on_fixed_predictions(bench_dir, tmp_path, monkeypatch):
    eng = _fake(monkeypatch, {
        "colour is the square": _ok("B"),                    # correct letter
        "How many circles": _ok("(A)"),                      # wrong letter
        "shape is the red": "<answer>circle</answer>",       # option text, correct; format invalid
        "blue triangle": _ok("yes"),                         # correct (case-insensitive)
        "red circle?": "No, I think it is 3",                # no tag: whole text judged; format invalid
        "red circles are there": _ok("3"),                   # correct
        "plus two": "<caption>x</caption><answer>7</answer>",  # correct answer, format invalid (no think)
    })
    res = evaluate_checkpoint("unused-ckpt", list(SPECS.values()), EvalConfig(batch_size=2), bench_dir=bench_dir,
                              cache_dir=None, checkpoint_key="fake", out_dir=tmp_path)
    b = res["benchmarks"]
    assert b["t-mcq"]["accuracy"] == pytest.approx(2 / 3) and b["t-mcq"]["format_rate"] == pytest.approx(2 / 3)
    assert b["t-yesno"]["accuracy"] == pytest.approx(1.0) and b["t-yesno"]["format_rate"] == pytest.approx(0.5)
    assert b["t-open"]["accuracy"] == pytest.approx(1.0) and b["t-open"]["format_rate"] == pytest.approx(0.5)
    assert b["t-mcq"]["by_category"] == {"colour": {"n": 1, "accuracy": 1.0}, "count": {"n": 1, "accuracy": 0.0},
                                         "shape": {"n": 1, "accuracy": 1.0}}
    assert res["metrics"]["eval/avg/accuracy"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    # baselines of the files, by hand: t-mcq has 4, 4 and 2 options in three one-item categories; t-yesno
    # one Yes and one No; t-open two distinct answers (no category: one group), a tie for the majority
    hand = {"t-mcq": ((1 / 4 + 1 / 4 + 1 / 2) / 3, 1.0), "t-yesno": (0.5, 0.5), "t-open": (0.5, 0.5)}
    for name, (ch, maj) in hand.items():
        assert b[name]["chance"] == pytest.approx(ch) and b[name]["majority"] == pytest.approx(maj)
        assert res["metrics"][f"eval/{name}/chance"] == pytest.approx(ch)
        assert res["metrics"][f"eval/{name}/majority"] == pytest.approx(maj)
    assert not [k for k in res["metrics"] if k.startswith("eval/avg/") and k.split("/")[-1] in ("chance", "majority")]
    rows = {r["index"]: r for r in read_jsonl(tmp_path / "predictions" / "t-yesno.jsonl")}
    assert rows[11]["has_answer_tag"] is False and rows[11]["extracted"] == "No, I think it is 3"
    assert rows[10]["extracted"] == "yes" and rows[10]["correct"] is True
    # batches of 2, greedy: no seed, neutral sampling knobs, the benchmark's token budget
    assert all(c["batch_size"] == 2 for c in eng.calls)
    assert all(c["do_sample"] is False and c["seed"] is None and c["max_new_tokens"] == 6 for c in eng.calls)
    assert len(eng.calls) == 2 + 1 + 1


def test_prompts_system_message_options_and_yesno(bench_dir, tmp_path):
    items = {s: read_benchmark_tsv(bench_dir / f"{s}.tsv") for s in SPECS}
    p = build_prompt(SPECS["t-mcq"], items["t-mcq"][0], Prompting())
    assert p.messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    user = p.messages[1]
    assert user["role"] == "user" and user["content"][0] == {"type": "image"} and len(p.images) == 1
    assert user["content"][1]["text"] == ("What colour is the square?\nA. red\nB. blue\nC. green\nD. yellow\n"
                                          "Answer with the letter.")
    assert prompt_text(SPECS["t-mcq"], items["t-mcq"][2], Prompting()).count("\n") == 3  # empty C/D dropped
    assert prompt_text(SPECS["t-yesno"], items["t-yesno"][0], Prompting()).endswith("\nAnswer Yes or No.")
    assert prompt_text(SPECS["t-open"], items["t-open"][0], Prompting()) == "How many red circles are there?"
    no_sys = Prompting(system_prompt=False, yesno_instruction=False)
    assert [m["role"] for m in build_prompt(SPECS["t-yesno"], items["t-yesno"][0], no_sys).messages] == ["user"]
    assert prompt_text(SPECS["t-yesno"], items["t-yesno"][0], no_sys) == "Is there a blue triangle?"

    # prism_prompting.json next to the checkpoint (or in the artifact dir above it)
    ck = tmp_path / "art" / "model"
    ck.mkdir(parents=True)
    assert Prompting.from_checkpoint(ck) == Prompting()
    (ck.parent / "prism_prompting.json").write_text(json.dumps({"system_prompt": False}))
    assert Prompting.from_checkpoint(ck) == Prompting(system_prompt=False)
    (ck / "prism_prompting.json").write_text(json.dumps({"system_prompt": "no"}))
    with pytest.raises(ConfigError, match="system_prompt"):
        Prompting.from_checkpoint(ck)


def test_prompting_file_changes_prompts_and_cache_key(bench_dir, tmp_path, monkeypatch):
    eng = _fake(monkeypatch, {"": _ok("3")})
    ck = tmp_path / "ck"
    ck.mkdir()
    kw = dict(bench_dir=bench_dir, cache_dir=tmp_path / "cache", checkpoint_key="k")
    r1 = evaluate_checkpoint(ck, [SPECS["t-open"]], EvalConfig(), **kw)
    assert eng.prompts[0].messages[0]["role"] == "system"
    (ck / "prism_prompting.json").write_text(json.dumps({"system_prompt": False}))
    r2 = evaluate_checkpoint(ck, [SPECS["t-open"]], EvalConfig(), **kw)
    assert r2["benchmarks"]["t-open"]["cache_hit"] is False
    assert r1["benchmarks"]["t-open"]["cache_key"] != r2["benchmarks"]["t-open"]["cache_key"]
    assert eng.prompts[-1].messages[0]["role"] == "user"


@pytest.mark.parametrize(
    ("answer", "gt", "kind", "options", "expected"),
    [
        ("B", "B", "mcq", {"A": "red", "B": "blue"}, True),
        ("The answer is B", "B", "mcq", {"A": "red", "B": "blue"}, True),
        ("b", "B", "mcq", {"A": "red", "B": "blue"}, True),
        ("A", "B", "mcq", {"A": "red", "B": "blue"}, False),
        ("blue", "B", "mcq", {"A": "red", "B": "blue"}, True),
        ("Blue.", "B", "mcq", {"A": "red", "B": "blue"}, True),
        ("red", "B", "mcq", {"A": "red", "B": "blue"}, False),
        ("3", "C", "mcq", {"A": "1", "B": "2", "C": "3"}, True),
        ("(A) 1", "C", "mcq", {"A": "1", "B": "2", "C": "3"}, False),
        ("Yes", "Yes", "yesno", None, True),
        ("yes.", "Yes", "yesno", None, True),
        ("No, there is none", "No", "yesno", None, True),
        ("yes or no", "No", "yesno", None, False),
        ("No", "Yes", "yesno", None, False),
        ("7", "7", "open", None, True),
        ("7.0", "7", "open", None, True),
        ("8", "7", "open", None, False),
        ("", "7", "open", None, False),
    ],
)
def test_judge_answer(answer, gt, kind, options, expected):
    assert judge_answer(answer, gt, kind=kind, options=options) is expected


def test_score_response_flags():
    assert score_response(_ok("4"), "4", kind="open") == {
        "extracted": "4", "has_answer_tag": True, "correct": True, "format_valid": True}
    # no <answer> block: the whole response is judged (the paper's eval pattern)
    s = score_response("it is 4 I guess", "4", kind="open")
    assert s["has_answer_tag"] is False and s["format_valid"] is False and s["correct"] is True
    assert score_response("it is 5 I guess", "4", kind="open")["correct"] is False
    assert score_response(_ok(""), "4", kind="open")["correct"] is False


# --------------------------------------------------------------------------------------------- settings, cache
def test_resolve_settings_overrides():
    sampled = _spec("s", "open", do_sample=True, temperature=1.0, top_p=0.7, max_new_tokens=50)
    greedy = SPECS["t-open"]
    assert resolve_settings(sampled, EvalConfig(seed=3)) == GenerationSettings(50, True, 1.0, 0.7, -1, 3, None)
    # temperature 0 override = greedy, canonical knobs
    assert resolve_settings(sampled, EvalConfig(temperature=0)) == GenerationSettings(50, False, 0.0, 1.0, -1, 0, None)
    # a positive temperature override turns a greedy benchmark into a sampled one
    s = resolve_settings(greedy, EvalConfig(temperature=1.0, top_p=0.7, max_new_tokens=9, limit=2))
    assert s == GenerationSettings(9, True, 1.0, 0.7, -1, 0, 2)
    assert resolve_settings(greedy, EvalConfig(top_p=0.5)).top_p == 1.0  # greedy ignores top_p


def test_cache_key_fields_and_atomic_store(tmp_path):
    base = dict(checkpoint_key="c", benchmark="b", file_sha256="f", settings={"seed": 0, "limit": None},
                backend="builtin", prompting={"system_prompt": True})
    k = cache_key(**base)
    assert k == cache_key(**base)
    for field, value in [("checkpoint_key", "c2"), ("benchmark", "b2"), ("file_sha256", "g"),
                         ("settings", {"seed": 1, "limit": None}), ("settings", {"seed": 0, "limit": 5}),
                         ("backend", "vlmevalkit"), ("prompting", {"system_prompt": False})]:
        assert cache_key(**{**base, field: value}) != k, field
    cache = PredictionCache(tmp_path / "cache" / "predictions")
    assert cache.get(k) is None and k not in cache
    cache.put(k, [{"index": 1, "prediction": "x"}], meta={"n": 1})
    assert cache.get(k) == [{"index": 1, "prediction": "x"}] and k in cache
    assert sorted(p.name for p in cache.dir.iterdir()) == sorted([f"{k}.jsonl", f"{k}.meta.json"])  # no temp files
    cache.path(k).write_text("{broken\n")
    assert cache.get(k) is None  # unreadable entry = miss


def test_limit_and_seed_enter_the_key_and_sampling_passes_seed(bench_dir, tmp_path, monkeypatch):
    eng = _fake(monkeypatch, {"": _ok("3")})
    spec = _spec("t-open", "open", do_sample=True, temperature=1.0, top_p=0.7)
    kw = dict(bench_dir=bench_dir, cache_dir=tmp_path / "c", checkpoint_key="k")
    r = evaluate_checkpoint("x", [spec], EvalConfig(limit=1, seed=5), **kw)
    assert r["benchmarks"]["t-open"]["n"] == 1
    # baselines of the one item evaluated: one answer, so chance and majority are both 1
    assert r["metrics"]["eval/t-open/chance"] == 1.0 and r["metrics"]["eval/t-open/majority"] == 1.0
    assert eng.calls[-1]["seed"] == 5 and eng.calls[-1]["do_sample"] is True and eng.calls[-1]["top_p"] == 0.7
    n = len(eng.calls)
    cached = evaluate_checkpoint("x", [spec], EvalConfig(limit=1, seed=5), **kw)
    assert cached["benchmarks"]["t-open"]["cache_hit"]
    assert cached["benchmarks"]["t-open"]["majority"] == 1.0 and cached["metrics"] == r["metrics"]
    assert len(eng.calls) == n
    assert not evaluate_checkpoint("x", [spec], EvalConfig(limit=1, seed=6), **kw)["benchmarks"]["t-open"]["cache_hit"]
    assert not evaluate_checkpoint("x", [spec], EvalConfig(seed=5), **kw)["benchmarks"]["t-open"]["cache_hit"]
    assert len(eng.calls) == n + 2


# --------------------------------------------------------------------------------------------- errors
def test_missing_benchmark_file_is_a_clear_error(bench_dir, tmp_path, monkeypatch):
    eng = _fake(monkeypatch, {"": _ok("3")})
    missing = _spec("t-missing", "open")
    with pytest.raises(DataError) as ei:
        evaluate_checkpoint("x", [SPECS["t-open"], missing], EvalConfig(), bench_dir=bench_dir,
                            cache_dir=None, checkpoint_key="k")
    msg = str(ei.value)
    assert "t-missing" in msg and "t-missing.tsv" in msg and str(bench_dir / "t-missing.tsv") in msg
    assert eng.calls == []  # checked before anything is generated
    with pytest.raises(Exception, match="unknown benchmark 'nope'"):
        evaluate_checkpoint("x", ["nope"], EvalConfig(), bench_dir=bench_dir, cache_dir=None, checkpoint_key="k")


def test_backend_registry():
    assert "builtin" in EVAL_BACKENDS
    assert get_backend_class("builtin") is BuiltinBackend
    with pytest.raises(ConfigError, match="unknown eval backend 'nope'"):
        get_backend_class("nope")
    rows = [{"correct": True, "format_valid": False, "n_tokens": 4, "finish_reason": "length"},
            {"correct": False, "format_valid": True, "n_tokens": 2, "finish_reason": "stop"}]
    m = BenchmarkResult("b", rows, GenerationSettings(4, False, 0.0, 1.0), "builtin").metrics
    assert m["accuracy"] == 0.5 and m["format_rate"] == 0.5 and m["truncated_rate"] == 0.5
    assert m["mean_response_tokens"] == 3 and summarize_rows([])["n"] == 0


# --------------------------------------------------------------------------------------------- stage
class _Ctx:
    def __init__(self, root: Path, inputs: dict, config: EvalConfig) -> None:
        from prism_lab.harness.ledger import Ledger

        self.root, self.inputs, self.config = root, inputs, config
        self.key, self.ledger = "evalkey" * 8, Ledger(root)
        self.tables: list[tuple] = []
        self.tracker = type("T", (), {"log_table": lambda _s, *a, **k: self.tables.append(a)})()
        self.out_dir = root / "runs" / "eval" / ".partial"
        self.out_dir.mkdir(parents=True)
        self.log = logging.getLogger("test.eval")
        self.logged: list[tuple[int, dict]] = []
        self.record: dict = {}  # run.json's further entries (StageContext.record)

    def input(self, role):
        return self.inputs[role]

    def log_metrics(self, step, values):
        self.logged.append((step, dict(values)))


def test_stage_runner(bench_dir, tmp_path, monkeypatch):
    from prism_lab.harness.context import InputArtifact
    from prism_lab.stages.eval import run

    _fake(monkeypatch, {"": _ok("3")})
    art = tmp_path / "runs" / "sft" / "abc"
    (art / "model").mkdir(parents=True)
    (art / "model" / "config.json").write_text("{}")
    data = tmp_path / "runs" / "data" / "d"
    data.mkdir(parents=True)
    DataCatalog(bench_dir=str(bench_dir)).save(data)
    ctx = _Ctx(tmp_path, {"checkpoint": InputArtifact("sftkey123", "sft", art, {}),
                          "data": InputArtifact("datakey", "data", data, {})},
               EvalConfig(benchmarks=["synth-perception"]))
    monkeypatch.setattr("prism_lab.eval.benchmarks.load_benchmark", lambda name, dirs=None: SPECS["t-open"])
    monkeypatch.setattr("prism_lab.eval.run.load_benchmark", lambda name, dirs=None: SPECS["t-open"])
    summary = run(ctx)
    assert ctx.logged == [(0, summary)]
    assert summary["eval/t-open/accuracy"] == 0.5 and summary["eval/avg/accuracy"] == 0.5
    assert summary["eval/t-open/n"] == 2.0
    res = json.loads((ctx.out_dir / "results.json").read_text())
    assert res["checkpoint_key"] == "sftkey123"
    assert (ctx.out_dir / "predictions" / "t-open.jsonl").is_file()
    assert len(list((tmp_path / "cache" / "predictions").glob("*.jsonl"))) == 1
    scores = ctx.ledger.item_scores([ctx.key])[ctx.key]["t-open"]  # per-item scores for the item bootstrap
    assert sorted(scores.values()) == [0.0, 1.0] and len(scores) == 2
    from prism_lab.eval.fingerprint import recorded_fingerprints

    prints = recorded_fingerprints(ctx.ledger, [ctx.key])[ctx.key]  # the ledger's, run.json's and results.json's
    assert prints == ctx.record["eval_fingerprints"] == {"t-open": res["benchmarks"]["t-open"]["fingerprint"]}
    [(name, columns, rows)] = ctx.tables  # the W&B table of sample generations
    assert name == "eval_samples/t-open" and columns == ["index", "prompt", "image", "response", "score"]
    assert len(rows) == 2 and rows[0][2].size == (32, 32) and {r[4] for r in rows} == {0.0, 1.0}
