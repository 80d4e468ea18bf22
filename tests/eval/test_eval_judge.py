"""The model judge of the builtin backend (prism_lab/eval/judge.py, issue #34 item 3), against a stand-in
OpenAI-compatible endpoint on 127.0.0.1 (tests/eval/judge_server.py): asked only about the answers the rule did not
accept, its model and version recorded in results and fingerprints, its verdicts cached, and a judge that does not
answer fails the evaluation with one line naming its URL (no answer scored wrong for it)."""

from __future__ import annotations

import json

import pytest

from prism_lab.config.eval import EvalConfig
from prism_lab.eval.fingerprint import mixed_fingerprints
from prism_lab.eval.judge import JudgeClient, JudgeError
from prism_lab.eval.run import evaluate_checkpoint
from prism_lab.eval.predictions import read_jsonl
from tests.eval.judge_server import StandInJudge
from tests.eval.test_eval_builtin import SPECS, _fake, _ok, bench_dir  # noqa: F401 - bench_dir is a fixture

ANSWERS = {
    "colour is the square": _ok("B"),      # the rule accepts: never sent to the judge
    "How many circles": _ok("(A)"),        # the rule rejects (wrong letter): the judge says 0
    "shape is the red": _ok("circle"),     # the rule accepts the option text
    "red circles are there": _ok("3"),     # the rule accepts
    "plus two": _ok("seven"),              # the rule cannot read it: the judge says 1
}
BENCHES = [SPECS["t-mcq"], SPECS["t-open"]]


def _cfg(url: str, model: str = "stand-in-judge", **kw) -> EvalConfig:
    return EvalConfig(judge={"url": url, "model": model, **kw})


def test_the_judge_decides_only_what_the_rule_did_not_accept_and_is_recorded(bench_dir, tmp_path, monkeypatch):
    eng = _fake(monkeypatch, ANSWERS)
    cache = tmp_path / "cache"
    with StandInJudge() as judge:
        res = evaluate_checkpoint("unused", BENCHES, _cfg(judge.url), bench_dir=bench_dir, cache_dir=cache,
                                  checkpoint_key="k", out_dir=tmp_path / "out")
        asked = [m["messages"][0]["content"] for m in judge.chats]
        assert len(asked) == 2 and all(m["model"] == "stand-in-judge" for m in judge.chats)
        assert "How many circles" in asked[0] and "plus two" in asked[1]
        b = res["benchmarks"]
        assert b["t-mcq"]["accuracy"] == pytest.approx(2 / 3) and b["t-open"]["accuracy"] == 1.0
        rows = {r["index"]: r for r in read_jsonl(tmp_path / "out" / "predictions" / "t-open.jsonl")}
        assert rows[21]["judged_by"] == "judge" and rows[21]["correct"] is True and rows[20]["judged_by"] == "rule"
        on_disk = json.loads((tmp_path / "out" / "results.json").read_text())["judge"]
        assert on_disk == res["judge"]
        assert on_disk["model"] == "stand-in-judge" and on_disk["version"] == "stand-in/stand-in-judge-weights"
        assert on_disk["system_fingerprints"] == ["fp-stand-in"] and on_disk["calls"] == 2 and on_disk["url"] == judge.url
        for fp in res["fingerprints"].values():
            assert (fp["fields"]["judge"], fp["fields"]["judge_version"]) == (
                "stand-in-judge", "stand-in/stand-in-judge-weights")

        # a rerun asks the judge nothing: predictions and verdicts come from the caches
        judge.chats.clear()
        again = evaluate_checkpoint("unused", BENCHES, _cfg(judge.url), bench_dir=bench_dir, cache_dir=cache,
                                    checkpoint_key="k", out_dir=tmp_path / "out2")
        assert judge.chats == [] and again["judge"]["calls"] == 0 and again["judge"]["cached"] == 2
        assert again["metrics"] == res["metrics"] and again["fingerprints"] == res["fingerprints"]
    assert len(eng.calls) == 2  # one generation per benchmark, on the first run only


def test_another_judge_model_is_another_protocol(bench_dir, tmp_path, monkeypatch):
    _fake(monkeypatch, ANSWERS)
    prints = {}
    with StandInJudge(models=("judge-a", "judge-b")) as judge:
        for model in ("judge-a", "judge-b"):
            prints[model] = evaluate_checkpoint("unused", [SPECS["t-open"]], _cfg(judge.url, model), bench_dir=bench_dir,
                                                cache_dir=None, checkpoint_key="k")["fingerprints"]
        assert {m["model"] for m in judge.chats} == {"judge-a", "judge-b"}
    rule_only = evaluate_checkpoint("unused", [SPECS["t-open"]], EvalConfig(), bench_dir=bench_dir, cache_dir=None,
                                    checkpoint_key="k")["fingerprints"]
    hashes = {prints["judge-a"]["t-open"]["hash"], prints["judge-b"]["t-open"]["hash"], rule_only["t-open"]["hash"]}
    assert len(hashes) == 3
    (mixed,) = mixed_fingerprints({"a": prints["judge-a"], "b": prints["judge-b"]})
    assert set(mixed.fields) == {"judge", "judge_version"}
    # the eval config, hence the eval stage's key, names the judge; without one the dump (and every old key) is unchanged
    assert _cfg("http://h/v1", "judge-a").model_dump() != _cfg("http://h/v1", "judge-b").model_dump()
    assert "judge" not in EvalConfig().model_dump()


def test_a_judge_that_is_down_fails_the_evaluation_before_generating(bench_dir, tmp_path, monkeypatch):
    eng = _fake(monkeypatch, ANSWERS)
    with StandInJudge() as judge:
        url = judge.url
    with pytest.raises(JudgeError) as err:  # nothing listens there any more
        evaluate_checkpoint("unused", BENCHES, _cfg(url, retries=0), bench_dir=bench_dir, cache_dir=tmp_path / "c",
                            checkpoint_key="k", out_dir=tmp_path / "out")
    msg = str(err.value)
    assert msg.startswith(f"judge {url}: no answer from /models") and "\n" not in msg
    assert eng.calls == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("status", [500, 400])
def test_a_judge_that_fails_mid_run_writes_no_score(bench_dir, tmp_path, monkeypatch, status):
    _fake(monkeypatch, ANSWERS)
    with StandInJudge(chat_status=status) as judge:
        with pytest.raises(JudgeError, match=rf"^judge {judge.url}: HTTP {status} .*from /chat/completions"):
            evaluate_checkpoint("unused", [SPECS["t-open"]], _cfg(judge.url, retries=1), bench_dir=bench_dir,
                                cache_dir=tmp_path / "c", checkpoint_key="k", out_dir=tmp_path / "out")
        assert len(judge.chats) == (2 if status == 500 else 1)  # a 5xx is tried again, a 4xx is not
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "predictions").exists()
    assert list((tmp_path / "c").glob("*.jsonl"))  # the generations are kept for the rerun; no verdict is
    assert not (tmp_path / "c" / "judge").exists()


def test_a_transient_failure_is_retried_and_a_reply_without_verdict_is_an_error(monkeypatch):
    from prism_lab.config.eval import JudgeSettings

    with StandInJudge(chat_status=503, fail_first=1) as judge:
        client = JudgeClient(JudgeSettings(url=judge.url, model="stand-in-judge", retries=1), backoff_s=0)
        assert client.verdict("q", "7", "<answer>seven</answer>") is True and len(judge.chats) == 2
    monkeypatch.setattr("tests.eval.judge_server.rule_verdict", lambda prompt: "maybe 0 or 1")
    with StandInJudge() as judge:
        client = JudgeClient(JudgeSettings(url=judge.url, model="stand-in-judge"))
        with pytest.raises(JudgeError, match="holds no single 0/1 verdict"):
            client.verdict("q", "7", "x")
        missing = JudgeClient(JudgeSettings(url=judge.url, model="qwen", api_key_env="PRISM_TEST_NO_SUCH_KEY"),
                              env={})
        with pytest.raises(JudgeError, match="PRISM_TEST_NO_SUCH_KEY"):
            missing.identity()
        with pytest.raises(JudgeError, match="model 'qwen' .* is not served; it serves: stand-in-judge"):
            JudgeClient(JudgeSettings(url=judge.url, model="qwen")).identity()
