"""RL trainer (prism_lab.trainers.rl) and the `rl` stage: presets run, rewards, DAPO errors, resume, on-policy path."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import prism_lab.trainers.rl as rl_mod
from prism_lab.config.rl import RLConfig
from prism_lab.data.rl_parquet import RLExample
from prism_lab.errors import ConfigError, PrismError
from prism_lab.models.loader import build_tiny_policy
from prism_lab.models.tokenizer import build_tokenizer
from prism_lab.prompts import SYSTEM_PROMPT, format_response
from prism_lab.rewards import RewardResult
from prism_lab.rollout import Rollout
from prism_lab.trainers.rl import RESUME_DIR, score_rollouts, train_rl
from tests.fakes import counting_corpus

REQUIRED_METRICS = (
    "reward/mean", "acc/mean", "format/mean", "clipfrac/low", "clipfrac/high", "approx_kl", "entropy",
    "response_length/mean", "filtered_group_share", "time/generate", "time/score", "time/train", "samples/s",
)


@pytest.fixture(scope="module")
def tok():
    torch.set_num_threads(1)
    return build_tokenizer(counting_corpus(), vocab_size=400)


def _policy(tok):
    return build_tiny_policy("tiny-xs", tok, seed=0)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def examples() -> list[RLExample]:
    return [
        RLExample(index=i, data_source="mm_gad",
                  prompt=[{"role": "system", "content": SYSTEM_PROMPT},
                          {"role": "user", "content": f"<image>how many red circles are there ? add {i % 10} ."}],
                  images=[_png(i)], ground_truth=str(i % 7), equivalent_answers=[])
        for i in range(10)
    ]


def parity_score(text, gt, eq=(), acc_weight=0.8, format_weight=0.2):
    """A toy verifiable reward with within-group variance for a random policy."""
    acc = float(len(text) % 2 == 0)
    return RewardResult(acc_weight * acc, acc, 0.0)


def const_score(text, gt, eq=(), acc_weight=0.8, format_weight=0.2):
    return RewardResult(0.0, 0.0, 0.0)


def _cfg(algorithm="grpo", **kw) -> RLConfig:
    base = dict(algorithm=algorithm, steps=2, prompts_per_step=2, n=4, max_new_tokens=8, micro_batch_size=3,
                seed=0, save_every=1000, algorithm_overrides={"lr": 1e-3})
    base.update(kw)
    return RLConfig(**base)


def test_score_rollouts_uses_the_rule_reward_and_overlong():
    ex = [SimpleNamespace(ground_truth="7", equivalent_answers=[])]
    good = format_response("- x", "3 plus 4", "7")
    wrong = format_response("- x", "3 plus 3", "6")
    rs = [Rollout(0, [1] * 4, good, None, "stop"), Rollout(0, [1] * 8, wrong, None, "length"),
          Rollout(0, [1] * 6, "no format", None, "length")]
    plain = score_rollouts(rs, ex)
    assert [r[1:] for r in plain] == [(1.0, 1.0, 1.0), (0.2, 0.0, 1.0), (0.0, 0.0, 0.0)]
    assert [r[0] for r in plain] == [1.0, 0.2, 0.0]
    # DAPO shaping with L_max 8, buffer 4: lengths 4, 8, 6 -> penalties 0, -1, -0.5
    shaped = score_rollouts(rs, ex, overlong=(8, 4, 1.0))
    assert [round(r[0], 6) for r in shaped] == [1.0, -0.8, -0.5]
    weighted = score_rollouts(rs[:1], ex, acc_weight=0.5, format_weight=0.5)
    assert weighted[0][0] == 1.0


@pytest.mark.parametrize("algorithm,overrides", [
    ("grpo", {}),
    ("dapo", {"overlong_buffer.len_ratio": 0.5, "filter_groups.gen_batch_multiplier": 1.0}),
    ("gspo", {}),
])
def test_presets_run_with_finite_metrics(tok, examples, algorithm, overrides):
    model, proc = _policy(tok)
    before = [p.detach().clone() for p in model.parameters()]
    logged = []
    cfg = _cfg(algorithm, algorithm_overrides={"lr": 1e-3, **overrides})
    res = train_rl(model, proc, examples, cfg, score_fn=parity_score, log=lambda s, m: logged.append((s, m)))
    assert res.steps_done == 2 and [s for s, _ in logged] == [1, 2]
    for _, m in logged:
        for k in REQUIRED_METRICS:
            assert k in m and math.isfinite(m[k]), (k, m.get(k))
        assert m["rollout/logprob_diff_max"] < 1e-4
    assert res.recompute_calls == 0
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed, "the policy was updated"


def test_dapo_overlong_buffer_must_fit(tok, examples):
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="len_ratio"):
        _cfg("dapo")  # refused when the grid is read (4096 > max_new_tokens 8)
    model, proc = _policy(tok)
    unchecked = _cfg("grpo").model_copy(update={"algorithm": "dapo"})  # built without validation
    with pytest.raises(ConfigError, match="len_ratio"):  # the trainer keeps its own check
        train_rl(model, proc, examples, unchecked, score_fn=parity_score)


def test_dynamic_sampling_gives_up_with_a_clear_error(tok, examples):
    model, proc = _policy(tok)
    cfg = _cfg("dapo", algorithm_overrides={"overlong_buffer.len_ratio": 0.5, "filter_groups.max_num_gen_batches": 2,
                                            "filter_groups.gen_batch_multiplier": 1.0})
    calls = []
    real = rl_mod._RLRun._generate

    def counting(self, step, k, n_prompts):
        calls.append(k)
        return real(self, step, k, n_prompts)

    rl_mod._RLRun._generate = counting
    try:
        with pytest.raises(PrismError, match="dynamic sampling.*max_num_gen_batches=2"):
            train_rl(model, proc, examples, cfg, score_fn=const_score)
    finally:
        rl_mod._RLRun._generate = real
    assert calls == [0, 1]


def test_on_policy_uses_rollout_logprobs_off_policy_recomputes(tok, examples, monkeypatch):
    calls = []
    real = rl_mod.recompute_logprobs

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(rl_mod, "recompute_logprobs", counting)
    model, proc = _policy(tok)
    logged = []
    train_rl(model, proc, examples, _cfg("grpo"), score_fn=parity_score, log=lambda s, m: logged.append(m))
    assert calls == [] and all(m["rollout/old_logp_from_rollout"] == 1.0 for m in logged)
    assert all(abs(m["approx_kl"]) < 1e-6 and m["clipfrac/low"] == 0 == m["clipfrac/high"] for m in logged)

    model, proc = _policy(tok)
    logged = []
    res = train_rl(model, proc, examples, _cfg("gspo_paper"), score_fn=parity_score, log=lambda s, m: logged.append(m))
    assert len(calls) == 2 and res.recompute_calls == 2  # one no-grad pass per step
    assert all(m["actor/num_updates"] == 4 for m in logged)


def test_resume_continues_at_the_right_step(tok, examples, tmp_path):
    cfg = _cfg("grpo", steps=4, save_every=2)
    # uninterrupted reference run
    ref_model, proc = _policy(tok)
    ref = train_rl(ref_model, proc, examples, cfg, score_fn=parity_score)
    assert ref.steps_done == 4
    # interrupted after 2 steps (state saved at step 2), then restarted from the initial policy
    out = tmp_path / "run"
    m1, p1 = _policy(tok)
    first = train_rl(m1, p1, examples, cfg, score_fn=parity_score, out_dir=out, max_steps=2)
    assert first.steps_done == 2
    assert (out / RESUME_DIR / "meta.json").is_file()
    m2, p2 = _policy(tok)
    logged = []
    second = train_rl(m2, p2, examples, cfg, score_fn=parity_score, out_dir=out, log=lambda s, m: logged.append(s),
                      remove_resume=True)
    assert second.start_step == 2 and second.steps_done == 4 and logged == [3, 4]
    assert not (out / RESUME_DIR).exists()
    for a, b in zip(ref_model.parameters(), m2.parameters()):
        assert torch.allclose(a, b, atol=1e-6), "resumed run reproduces the uninterrupted one"
    for a, b in zip(ref.history[2:], second.history):
        assert a["reward/mean"] == b["reward/mean"]


def test_time_budget_stops_early_and_saves(tok, examples, tmp_path):
    model, proc = _policy(tok)
    cfg = _cfg("grpo", steps=50, max_minutes=1e-4)
    res = train_rl(model, proc, examples, cfg, score_fn=parity_score, out_dir=tmp_path)
    assert res.stopped_early and res.steps_done < 50


def test_stage_runner_end_to_end(tok, examples, tmp_path):
    from prism_lab.data.catalog import DataCatalog
    from prism_lab.data.rl_parquet import write_rl_parquet
    from prism_lab.models.loader import load_policy, save_policy
    from prism_lab.stages.rl import run

    model, proc = _policy(tok)
    pol = tmp_path / "policy"
    save_policy(model, proc, pol / "model")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"data_source": "mm_gad", "prompt": ex.prompt, "images": [{"bytes": ex.images[0], "path": None}],
             "reward_model": {"ground_truth": ex.ground_truth, "equivalent_answers": []},
             "extra_info": {"index": ex.index, "family": "count", "split": "train", "item_id": str(ex.index),
                            "difficulty": "easy", "meta": ""}, "teacher_caption": None, "teacher_cot": None}
            for ex in examples[:4]]
    write_rl_parquet(data / "rl.parquet", rows)
    DataCatalog(rl="rl.parquet", image_root=".").save(data)
    out = tmp_path / "out"
    out.mkdir()
    logged = []
    ctx = SimpleNamespace(
        config=_cfg("grpo", steps=1, threads=1),
        inputs={"policy": SimpleNamespace(path=pol), "data": SimpleNamespace(path=data)},
        out_dir=out, log_metrics=lambda s, m: logged.append(s), heartbeat=lambda: None,
        log=SimpleNamespace(info=lambda *a, **k: None),
        input=lambda role: ctx.inputs[role],
    )
    summary = run(ctx)
    assert summary["steps_done"] == 1 and logged == [1]
    assert (out / "model" / "config.json").is_file() and not (out / RESUME_DIR).exists()
    load_policy(Path(out / "model"))


def test_shared_prefix_forward_equals_full_forward(tok, examples):
    """The prompt-once forward gives the same log-probs and gradients as the full forward."""
    from prism_lab.rollout import HFGenerateEngine, Prompt, build_prompt_inputs
    from prism_lab.trainers.logprobs import completion_logprobs, make_sequence_batch

    model, proc = _policy(tok)
    prompts = [Prompt(ex.prompt, ex.load_images()) for ex in examples[:2]]
    prompts.append(Prompt([{"role": "user", "content": "<image>hi"}], examples[2].load_images()))  # shorter prompt
    eng = HFGenerateEngine(model, proc)
    outs = eng.generate(prompts, n=3, max_new_tokens=10, seed=0, return_logprobs=True)
    outs = [outs[i] for i in (4, 0, 8, 1, 5, 2, 7, 3, 6)]  # interleave groups
    sb = make_sequence_batch(build_prompt_inputs(proc, prompts), [o.prompt_index for o in outs],
                             [o.token_ids for o in outs], pad_token_id=eng.pad_id)
    assert sb.prefix is not None and sb.prefix["input_ids"].shape[0] == 3
    model.train()
    got = {}
    for shared in (False, True):
        model.zero_grad(set_to_none=True)
        lp, _ = completion_logprobs(model, sb, suppress_token_ids=eng.suppress_token_ids, shared_prefix=shared)
        (lp * torch.linspace(-1, 1, lp.numel()).view_as(lp)).sum().backward()
        got[shared] = (lp.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    assert torch.allclose(got[True][0], got[False][0], atol=1e-5)
    assert len(got[True][1]) == len(got[False][1])
    for a, b in zip(got[True][1], got[False][1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    for i, o in enumerate(outs):
        assert torch.allclose(got[True][0][i, : len(o.token_ids)], torch.tensor(o.logprobs), atol=1e-4)


def test_shared_prefix_with_one_token_runs_the_same_two_passes(tok, examples):
    """A batch of one-token completions still makes two model calls (as longer ones do: under FSDP every rank
    must run as many passes as the others, whatever its micro-batch) and gives the full forward's log-probs."""
    from prism_lab.rollout import Prompt, build_prompt_inputs
    from prism_lab.trainers.logprobs import completion_logprobs, make_sequence_batch

    model, proc = _policy(tok)
    prompts = [Prompt(ex.prompt, ex.load_images()) for ex in examples[:2]]
    sb = make_sequence_batch(build_prompt_inputs(proc, prompts), [0, 1, 0], [[7], [9], [11]], pad_token_id=0)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        shared, _ = completion_logprobs(model, sb, shared_prefix=True)
    finally:
        hook.remove()
    full, _ = completion_logprobs(model, sb, shared_prefix=False)
    assert len(calls) == 2
    assert shared.shape == full.shape == (3, 1)
    assert torch.allclose(shared, full, atol=1e-5)


def test_token_budgets_reach_the_update_and_the_recompute_and_leave_the_training_unchanged(tok, examples, monkeypatch):
    """`max_tokens_per_micro_batch` / `log_prob_max_tokens_per_micro_batch` (algorithm overrides) cut the update's and
    the old-log-prob recompute's micro-batches; the trained weights equal those of row micro-batches."""
    budgets = []
    real = rl_mod.micro_batches

    def spying(*a, **kw):
        out = real(*a, **kw)
        budgets.append((kw["max_tokens"], len(out)))
        return out

    monkeypatch.setattr(rl_mod, "micro_batches", spying)
    trained = []
    for extra in ({}, {"max_tokens_per_micro_batch": 40, "log_prob_max_tokens_per_micro_batch": 10_000}):
        model, proc = _policy(tok)
        train_rl(model, proc, examples, _cfg("gspo_paper", steps=1, algorithm_overrides={"lr": 1e-3, **extra}),
                 score_fn=parity_score)
        trained.append([p.detach().clone() for p in model.parameters()])
    cut = [n for b, n in budgets if b == 40]
    assert len(cut) == 4 and sum(cut) > 4  # 4 mini-batches, at least one cut in several micro-batches
    assert [n for b, n in budgets if b == 10_000] == [1]  # the recompute: every row in one micro-batch
    for a, b in zip(*trained):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
