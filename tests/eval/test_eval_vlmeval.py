"""The vlmevalkit evaluation backend (prism_lab.eval.vlmeval: backend / model / datasets /
judge / tv_shim) and the paper's benchmark YAMLs.

Tests that need VLMEvalKit skip unless ``vlmeval`` is importable here (the default environment does not
install the ``vlmeval`` extra; see docs/vlmevalkit.md). They run VLMEvalKit in the backend's worker
subprocess, so this test process never imports vlmeval. The others (benchmark YAMLs, missing-file
errors, rule scoring, the OpenAI-compatible judge) always run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from prism_lab.eval.vlmeval import tv_shim

tv_shim.install_hook()  # before anything imports transformers' Qwen3-VL (which imports torchvision)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from prism_lab.errors import DataError  # noqa: E402
from prism_lab.eval.backends import register_backend, resolve_settings  # noqa: E402
from prism_lab.eval.benchmarks import BenchmarkSpec, all_benchmarks, load_benchmark  # noqa: E402
from prism_lab.eval.vlmeval.datasets import (  # noqa: E402
    OFFICIAL,
    check_benchmark_file,
    missing_file_message,
)
from prism_lab.eval.vlmeval.judge import (  # noqa: E402
    JudgeConfig,
    OpenAIJudge,
    math_row_correct,
    rule_correct,
)
from prism_lab.prompts import format_response  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HAS_VLMEVAL = importlib.util.find_spec("vlmeval") is not None
needs_vlmeval = pytest.mark.skipif(
    not HAS_VLMEVAL,
    reason="VLMEvalKit (the 'vlmeval' extra) is not installed in this environment; see docs/vlmevalkit.md",
)
# The parity tests compare three backends: lmms-eval is installed beside VLMEvalKit (the README's set-up line).
needs_both_kits = pytest.mark.skipif(
    not (HAS_VLMEVAL and importlib.util.find_spec("lmms_eval") is not None),
    reason="the external backends' virtualenv (VLMEvalKit and lmms-eval: the 'vlmeval' and 'lmms' extras) is not "
    "this environment; see the README's set-up line",
)

PAPER = {  # name -> (kind, paper column, max_new_tokens) from docs/prism_method.md §8
    "MathVista_MINI": ("open", "MathVista", 16384),
    "MathVision_MINI": ("open", "MathVision", 24576),
    "MathVerse_MINI": ("open", "MathVerse", 16384),
    "WeMath": ("mcq", "WeMath", 49152),
    "MMMU_DEV_VAL": ("mcq", "MMMU", 8192),
    "MMMU_Pro_10c": ("mcq", "MMMU-Pro", 8192),
    "HallusionBench": ("yesno", "HalluBench", 8192),
    "MMStar": ("mcq", None, 8192),
}


def _ok(answer: str) -> str:
    return format_response("- a picture", "look and count", answer)


# ============================================================================ always run (no VLMEvalKit)
def test_paper_benchmarks_declared_with_paper_settings():
    specs = all_benchmarks()
    for name, (kind, column, max_new) in PAPER.items():
        s = specs[name]
        assert (s.source, s.vlmeval_name, s.file, s.kind) == ("vlmevalkit", name, f"{name}.tsv", kind)
        assert (s.temperature, s.top_p, s.top_k, s.do_sample) == (1.0, 0.7, -1, True)
        assert s.max_new_tokens == max_new and s.paper_column == column
        assert name in OFFICIAL


def test_missing_official_file_says_which_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("LMUData", str(tmp_path))
    spec = load_benchmark("MMStar")
    with pytest.raises(DataError) as e:
        check_benchmark_file(spec)
    msg = str(e.value)
    assert "MMStar.tsv" in msg and str(tmp_path / "MMStar.tsv") in msg
    assert OFFICIAL["MMStar"].url in msg and OFFICIAL["MMStar"].md5 in msg
    # a file that is there but is not the official one: md5 error, with the way out
    (tmp_path / "MMStar.tsv").write_text("index\tquestion\n1\tq\n")
    with pytest.raises(DataError, match="md5"):
        check_benchmark_file(spec)
    # synthetic benchmarks point at the data stage
    synth = load_benchmark("synth-perception")
    assert "data stage" in missing_file_message(synth, tmp_path / "bench" / "synth-perception.tsv")


def test_math_rule_scoring_rows():
    mv_mc = {"answer": "3", "answer_option": "B", "question_type": "multi_choice", "choices": "['2', '3', '4']"}
    assert math_row_correct("B", mv_mc) and math_row_correct("3", mv_mc) and not math_row_correct("A", mv_mc)
    mv_float = {"answer": "1.2", "question_type": "free_form", "answer_type": "float", "precision": "1.0"}
    assert math_row_correct("1.23", mv_float) and math_row_correct("1.2", mv_float)
    assert not math_row_correct("1.3", mv_float)
    mv_int = {"answer": "12", "question_type": "free_form", "answer_type": "integer"}
    assert math_row_correct("12", mv_int) and math_row_correct("$12$", mv_int) and not math_row_correct("13", mv_int)
    vision = {"answer": "C", "choices": "['1', '2', '3', '4', '5']"}
    assert math_row_correct("C", vision) and math_row_correct("(C)", vision) and not math_row_correct("D", vision)
    assert math_row_correct("\\frac{1}{2}", {"answer": "0.5"})
    assert rule_correct("answer is B", "B", kind="mcq", options={"A": "x", "B": "y"})


class _FakeOpenAI(BaseHTTPRequestHandler):
    """A loopback OpenAI-compatible server: says 1 when the ground truth appears in the response."""

    def log_message(self, *a):  # quiet
        pass

    def _send(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # /v1/models
        self._send({"data": [{"id": "fake-judge"}]})

    def do_POST(self):  # /v1/chat/completions
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = req["messages"][0]["content"]
        gt = prompt.split("Ground-truth answer:\n")[1].split("\n")[0]
        resp = prompt.split("Model response:\n")[1]
        self._send({"choices": [{"message": {"content": "1" if gt in resp else "0"}}]})


def test_openai_compatible_judge_on_loopback():
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        cfg = JudgeConfig.from_env({"PRISM_JUDGE_URL": url, "PRISM_JUDGE_TIMEOUT": "5"})
        judge = OpenAIJudge(cfg)
        assert judge.model() == "fake-judge"
        assert judge.correct("How many?", "seven", "I count seven apples") is True
        assert judge.correct("How many?", "seven", "I count six") is False
        assert JudgeConfig.from_env({}).url is None
        dead = OpenAIJudge(JudgeConfig(url="http://127.0.0.1:9/v1", model="m", timeout=1))
        assert dead.correct("q", "a", "a") is None and dead.failures == 1
    finally:
        server.shutdown()


def test_worker_entry_point_answers_and_the_backend_finds_the_checkout():
    """The worker module starts as the backend starts it and answers one JSON line on its protocol stream;
    the backend's checkout root (PYTHONPATH and cwd of the worker) is the repository."""
    from prism_lab.eval.vlmeval.backend import REPO as BACKEND_REPO

    assert BACKEND_REPO == REPO and (BACKEND_REPO / "pyproject.toml").is_file()
    res = subprocess.run([sys.executable, "-m", "prism_lab.eval.vlmeval.worker", "--worker"], input='{"op": "exit"}\n',
                         capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    reply = json.loads(res.stdout.splitlines()[0])
    assert reply["ready"] is HAS_VLMEVAL
    assert res.returncode == (0 if HAS_VLMEVAL else 1)


# ============================================================================ VLMEvalKit
def _vlm_python() -> str:
    from prism_lab.eval.vlmeval.backend import find_vlmeval_python

    return find_vlmeval_python()


@needs_vlmeval
def test_shim_vlmeval_and_qwen3vl_imports_keep_grads():
    """In a fresh process: shim + vlmeval, then transformers' Qwen3-VL classes import, grads still work."""
    code = (
        "import torch\n"
        "from prism_lab.eval.vlmeval import tv_shim\n"
        "tv_shim.import_vlmeval()\n"
        "from transformers import Qwen3VLForConditionalGeneration, Qwen3VLProcessor\n"
        "import vlmeval.dataset, vlmeval.inference\n"
        "assert torch.is_grad_enabled()\n"
        "x = torch.ones(3, requires_grad=True); (x * x).sum().backward(); assert x.grad.tolist() == [2.0] * 3\n"
        "import ssl; assert ssl._create_default_https_context is not ssl._create_unverified_context\n"
        "print('OK', tv_shim.shim_state()['reason'])\n"
    )
    out = subprocess.run([_vlm_python(), "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from prism_lab.models.loader import build_tiny_policy, save_policy
    from prism_lab.models.tokenizer import build_tokenizer
    from prism_lab.prompts import SYSTEM_PROMPT

    corpus = [SYSTEM_PROMPT, *(f"How many red circles are there? Is there a blue square? {i}" for i in range(30)),
              *(_ok(str(i)) for i in range(30))]
    tok = build_tokenizer(corpus, vocab_size=400)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    return save_policy(model, proc, tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from prism_lab.data.synth.generate import generate

    d = tmp_path_factory.mktemp("synth") / "data"
    generate({"n_sft_public": 0, "n_teacher": 0, "n_rl": 0, "n_warmup": 0, "n_bench": 16}, d)
    return d / "bench"


def _backend(**kw):
    from prism_lab.eval.vlmeval.backend import VLMEvalKitBackend

    return VLMEvalKitBackend(**kw)


def _variants(item, k: int) -> str:
    """A deterministic mix of right, wrong and oddly formatted responses for one item."""
    gt = item.answer
    opts = item.options
    wrong = next((x for x in opts if x != gt), "Z") if opts else ("No" if gt == "Yes" else "Yes" if gt == "No"
                                                                   else str(int(gt) + 1) if gt.isdigit() else "x")
    forms = [
        _ok(gt), _ok(wrong), gt, f"The answer is {gt}.", _ok(f"({gt})" if opts else gt + "."),
        _ok(opts[gt]) if opts else _ok(f"{gt}, I think" if gt in ("Yes", "No") else f"${gt}$"),
        "<answer></answer>", _ok(f"{gt} or {wrong}"), "garbage \x0c text", _ok(wrong.lower()),
    ]
    return forms[k % len(forms)]


@pytest.fixture(scope="module")
def lmms():
    """One lmms-eval backend (one worker: lmms-eval imported, the model loaded once) for the module's tests."""
    from prism_lab.eval.lmms.backend import LmmsEvalBackend

    backend = LmmsEvalBackend(batch_size=4)
    yield backend
    backend.close()


@needs_both_kits
def test_parity_builtin_vlmevalkit_lmms_eval_on_same_predictions(synth_dir, checkpoint, lmms):
    """Same prediction texts -> same per-row verdicts and accuracy in all three backends, on every synthetic
    benchmark (VLMEvalKit's and lmms-eval's own bookkeeping and scoring paths)."""
    from prism_lab.config.eval import EvalConfig
    from prism_lab.data.bench_tsv import read_benchmark_tsv
    from prism_lab.eval.backends import summarize_rows
    from prism_lab.eval.builtin import score_response

    backend = _backend(batch_size=8)
    try:
        for name in ("synth-perception", "synth-reasoning", "synth-hallusion"):
            spec = load_benchmark(name)
            items = read_benchmark_tsv(synth_dir / spec.file)
            preds = {str(it.index): _variants(it, k) for k, it in enumerate(items)}
            builtin = [score_response(preds[str(it.index)], it.answer, kind=spec.kind, options=it.options)
                       for it in items]
            backend.replay[name] = preds
            res = backend.evaluate(checkpoint, spec, items, resolve_settings(spec, EvalConfig()))
            assert [r["prediction"] for r in res.rows] == [preds[str(it.index)] for it in items]
            assert [r["correct"] for r in res.rows] == [b["correct"] for b in builtin], name
            assert [r["format_valid"] for r in res.rows] == [b["format_valid"] for b in builtin]
            acc = summarize_rows(builtin)["accuracy"]
            assert 0 < acc < 1 and res.metrics["accuracy"] == pytest.approx(acc)
            table = res.info["vlmeval_metrics"][0]
            assert table["Overall"] == pytest.approx(100 * acc)
            if name == "synth-hallusion":  # VLMEvalKit's Hallusion metrics on our layout
                assert table["aAcc"] == pytest.approx(100 * acc) and "fAcc" in table and "qAcc" in table
            lmms.replay[name] = preds
            third = lmms.evaluate(checkpoint, spec, items, resolve_settings(spec, EvalConfig()))
            assert [r["index"] for r in third.rows] == [it.index for it in items]
            assert [r["prediction"] for r in third.rows] == [preds[str(it.index)] for it in items]
            assert [r["correct"] for r in third.rows] == [b["correct"] for b in builtin], name
            assert [r["format_valid"] for r in third.rows] == [b["format_valid"] for b in builtin]
            assert third.metrics["accuracy"] == pytest.approx(acc)
            lmms_acc = third.info["lmms_metrics"][third.info["lmms_tasks"][0]]["prism_correct,none"]
            assert lmms_acc == pytest.approx(acc)  # lmms-eval's own aggregation of its per-document verdicts
    finally:
        backend.close()
        lmms.replay.clear()


@needs_both_kits
def test_generation_parity_three_backends(synth_dir, checkpoint, lmms):
    """Greedy generation through VLMEvalKit's and lmms-eval's bookkeeping gives the built-in backend's exact
    prompts, responses and scores for the same checkpoint and decoding."""
    from prism_lab.config.eval import EvalConfig
    from prism_lab.data.bench_tsv import read_benchmark_tsv
    from prism_lab.eval.builtin import BuiltinBackend

    spec = load_benchmark("synth-hallusion")
    items = read_benchmark_tsv(synth_dir / spec.file)[:6]  # a limit: the worker evaluates a TSV subset
    settings = resolve_settings(spec, EvalConfig(max_new_tokens=6))
    backend = _backend(batch_size=4)
    try:
        res = backend.evaluate(checkpoint, spec, items, settings)
    finally:
        backend.close()
    third = lmms.evaluate(checkpoint, spec, items, settings)  # batch size 4, as below
    ref = BuiltinBackend(batch_size=4, progress=False).evaluate(checkpoint, spec, items, settings)
    for out in (res, third):
        assert [r["index"] for r in out.rows] == [it.index for it in items]
        assert [r["prediction"] for r in out.rows] == [r["prediction"] for r in ref.rows]
        assert [r["prompt"] for r in out.rows] == [r["prompt"] for r in ref.rows]
        assert [r["n_tokens"] for r in out.rows] == [r["n_tokens"] for r in ref.rows]
        assert [r["correct"] for r in out.rows] == [r["correct"] for r in ref.rows]
    assert res.info["vlmeval_class"] == "PrismYesNoDataset"
    assert third.info["lmms_tasks"] == ["prism_synth_hallusion"]


def _png(seed: int) -> str:
    from prism_lab.data.images import image_to_base64

    rng = np.random.default_rng(seed)
    return image_to_base64(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)))


def _official_layout_tsvs(root: Path) -> dict[str, BenchmarkSpec]:
    """Tiny local files laid out exactly as the official MMStar / HallusionBench / MathVista_MINI TSVs."""
    from prism_lab.data.bench_tsv import write_benchmark_tsv

    write_benchmark_tsv(root / "MMStar_tiny.tsv", [
        {"index": i, "question": q, "A": "red", "B": "blue", "C": "green", "D": "yellow", "answer": a,
         "category": "coarse perception", "l2-category": "image scene and topic", "bench": "SEEDBench_IMG",
         "image": _png(i)}
        for i, (q, a) in enumerate([("What colour dominates?", "B"), ("Which colour is absent?", "A"),
                                    ("What is the background colour?", "C")])
    ], ["index", "question", "A", "B", "C", "D", "answer", "category", "l2-category", "bench", "image"])
    hb = []
    for s in range(2):
        for f in range(2):
            for q in range(2):
                n = len(hb)
                hb.append({"index": f"VS_chart_{n}_{s}_{f}_{q}", "image": _png(100 + 2 * s + f) if q == 0 else
                           f"VS_chart_{n - 1}_{s}_{f}_0", "question": f"Is the bar {q} taller than the bar {s}?",
                           "answer": "Yes" if (s + f + q) % 2 == 0 else "No", "category": "VS",
                           "l2-category": "chart", "set_id": s, "figure_id": f, "question_id": q})
    write_benchmark_tsv(root / "HallusionBench_tiny.tsv", hb,
                        ["index", "image", "question", "answer", "category", "l2-category", "set_id", "figure_id",
                         "question_id"])
    import pandas as pd

    mathvista = pd.DataFrame([
        {"index": 1, "image": _png(200), "question": "What is the length of the red segment?", "answer": "1.2",
         "question_type": "free_form", "answer_type": "float", "choices": "", "answer_option": "", "precision": 1.0,
         "task": "geometry problem solving", "skills": "['geometry reasoning']"},
        {"index": 2, "image": _png(201), "question": "How many bars exceed 10?", "answer": "4",
         "question_type": "free_form", "answer_type": "integer", "choices": "", "answer_option": "", "precision": "",
         "task": "figure question answering", "skills": "['statistical reasoning']"},
        {"index": 3, "image": _png(202), "question": "Which angle is largest?\nChoices:\n(A) 30\n(B) 60\n(C) 90",
         "answer": "90", "question_type": "multi_choice", "answer_type": "text", "choices": "['30', '60', '90']",
         "answer_option": "C", "precision": "", "task": "geometry problem solving",
         "skills": "['geometry reasoning']"},
    ], columns=["index", "image", "question", "answer", "question_type", "answer_type", "choices", "answer_option",
                "precision", "task", "skills"])
    mathvista.to_csv(root / "MathVista_MINI_tiny.tsv", sep="\t", index=False)  # multi-line questions are quoted

    def spec(stem, kind, vname):
        return BenchmarkSpec(name=stem, kind=kind, file=f"{stem}.tsv", source="vlmevalkit", vlmeval_name=vname,
                             max_new_tokens=8, do_sample=False, temperature=0.0, top_p=1.0)

    return {"MMStar_tiny": spec("MMStar_tiny", "mcq", "MMStar"),
            "HallusionBench_tiny": spec("HallusionBench_tiny", "yesno", "HallusionBench"),
            "MathVista_MINI_tiny": spec("MathVista_MINI_tiny", "open", "MathVista_MINI")}


@needs_vlmeval
def test_tiny_checkpoint_on_official_layout_files_offline(checkpoint, tmp_path, monkeypatch):
    """evaluate_checkpoint(backend=vlmevalkit) on local MCQ / Yes-No (HallusionBench index layout) /
    MathVista-style files in $LMUData: real generation, VLMEvalKit's classes and bookkeeping, the cache."""
    from prism_lab.config.eval import EvalConfig
    from prism_lab.eval.run import evaluate_checkpoint

    register_backend("vlmevalkit", "prism_lab.eval.vlmeval.backend:VLMEvalKitBackend", replace=True)
    lmu = tmp_path / "LMUData"
    lmu.mkdir()
    specs = _official_layout_tsvs(lmu)
    monkeypatch.setenv("LMUData", str(lmu))
    monkeypatch.setenv("PRISM_VLMEVAL_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv("PRISM_JUDGE_URL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = EvalConfig(backend="vlmevalkit", batch_size=4, threads=1)
    res = evaluate_checkpoint(checkpoint, list(specs.values()), cfg, bench_dir=None, cache_dir=tmp_path / "cache",
                              checkpoint_key="ck-tiny", out_dir=tmp_path / "out")
    want = {"MMStar_tiny": ("ImageMCQDataset", 3), "HallusionBench_tiny": ("ImageYORNDataset", 8),
            "MathVista_MINI_tiny": ("MathVista", 3)}
    for name, (cls, n) in want.items():
        b = res["benchmarks"][name]
        assert b["n"] == n and 0.0 <= b["accuracy"] <= 1.0 and not b["cache_hit"]
        assert b["info"]["vlmeval_class"] == cls and Path(b["info"]["prediction_file"]).is_file()
        assert b["mean_response_tokens"] > 0
    assert res["benchmarks"]["HallusionBench_tiny"]["info"]["vlmeval_metrics"][0]["split"] == "Overall"
    assert (tmp_path / "out" / "predictions" / "MMStar_tiny.jsonl").is_file()
    # second run: every benchmark from the prediction cache (backend in the key), no VLMEvalKit worker
    again = evaluate_checkpoint(checkpoint, list(specs.values()), cfg, bench_dir=None,
                                cache_dir=tmp_path / "cache", checkpoint_key="ck-tiny")
    assert all(b["cache_hit"] for b in again["benchmarks"].values())
    assert again["metrics"] == pytest.approx(res["metrics"], nan_ok=True)


@needs_vlmeval
def test_official_layout_scoring_with_known_answers(checkpoint, tmp_path, monkeypatch):
    """Replayed responses on the official-layout files: VLMEvalKit's MCQ / Yes-No scoring and the PRISM
    math rule give the expected verdicts (and HallusionBench's aAcc / fAcc / qAcc)."""
    from prism_lab.config.eval import EvalConfig
    from prism_lab.data.bench_tsv import read_benchmark_tsv

    lmu = tmp_path / "LMUData"
    lmu.mkdir()
    specs = _official_layout_tsvs(lmu)
    monkeypatch.setenv("LMUData", str(lmu))
    monkeypatch.delenv("PRISM_JUDGE_URL", raising=False)
    replay = {
        "MMStar_tiny": {"0": _ok("B"), "1": _ok("C"), "2": "The answer is C. green"},
        "HallusionBench_tiny": {f"VS_chart_{n}_{s}_{f}_{q}": _ok("Yes" if (s + f + q) % 2 == 0 else "No")
                                for n, (s, f, q) in enumerate((s, f, q) for s in range(2) for f in range(2)
                                                               for q in range(2))},
        "MathVista_MINI_tiny": {"1": _ok("1.23"), "2": _ok("5"), "3": _ok("C")},
    }
    replay["HallusionBench_tiny"]["VS_chart_7_1_1_1"] = _ok("Maybe")  # undecided -> wrong without a judge
    expected = {"MMStar_tiny": [True, False, True], "HallusionBench_tiny": [True] * 7 + [False],
                "MathVista_MINI_tiny": [True, False, True]}
    backend = _backend(batch_size=4)
    backend.replay.update(replay)
    try:
        for name, spec in specs.items():
            items = read_benchmark_tsv(lmu / spec.file)
            res = backend.evaluate(checkpoint, spec, items, resolve_settings(spec, EvalConfig()))
            assert [r["correct"] for r in res.rows] == expected[name], name
            if name == "HallusionBench_tiny":
                t = res.info["vlmeval_metrics"][0]
                assert t["aAcc"] == pytest.approx(87.5) and t["qAcc"] == pytest.approx(75.0)
                assert t["fAcc"] == pytest.approx(75.0)
    finally:
        backend.close()


@needs_vlmeval
def test_backend_leaves_caller_grad_mode_and_reports_missing_files(checkpoint, tmp_path, monkeypatch):
    import torch

    from prism_lab.config.eval import EvalConfig
    from prism_lab.data.bench_tsv import read_benchmark_tsv

    lmu = tmp_path / "LMUData"
    lmu.mkdir()
    specs = _official_layout_tsvs(lmu)
    monkeypatch.setenv("LMUData", str(lmu))
    spec = specs["MMStar_tiny"]
    items = read_benchmark_tsv(lmu / spec.file)
    backend = _backend(batch_size=4)
    try:
        backend.evaluate(checkpoint, spec, items, resolve_settings(spec, EvalConfig(max_new_tokens=4)))
        assert torch.is_grad_enabled()
        x = torch.ones(2, requires_grad=True)
        (x * 3).sum().backward()
        assert x.grad.tolist() == [3.0, 3.0]
        (lmu / spec.file).unlink()  # the worker itself reports a missing file the same way
        with pytest.raises(DataError, match="MMStar_tiny.tsv"):
            backend.evaluate(checkpoint, spec, items, resolve_settings(spec, EvalConfig(max_new_tokens=4)))
    finally:
        backend.close()
