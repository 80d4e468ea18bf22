"""Stage 2 (PRISM alignment, docs/prism_method.md §6): end to end for both variants, learning signals with
format-valid rollouts, resuming, and bad inputs (missing teacher fields, foreign tokenizer, NaN scores)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from prism_lab.config.align import AlignConfig, DiscriminatorConfig
from prism_lab.data.catalog import DataCatalog, synth_catalog
from prism_lab.data.rl_parquet import read_rl_parquet
from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.generate import generate
from prism_lab.errors import CheckpointError, DataError
from prism_lab.harness.context import InputArtifact
from prism_lab.models import (
    build_tiny_policy,
    build_tokenizer,
    load_policy,
    save_policy,
)
from prism_lab.models.discriminator import (
    build_discriminator,
    load_discriminator,
    save_discriminator,
)
from prism_lab.rollout import Rollout, make_engine
from prism_lab.trainers.align import AlignExample, align_examples_from_rl, run_align
from prism_lab.trainers.disc_inputs import disc_tokens, plain_ids
from tests.fakes import FakeCtx

SMALL = dict(n_sft_public=16, n_teacher=8, n_rl=8, n_warmup=4, n_bench=4, include_system_prompt=False)


def _art(path: Path, kind: str) -> InputArtifact:
    return InputArtifact(key=kind * 4, kind=kind, path=path, config={})


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from prism_lab.stages.sft import task_corpus

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("align")
    generate(SynthConfig(**SMALL), root / "data_art" / "data")
    synth_catalog("data").save(root / "data_art")
    catalog = DataCatalog.load(root / "data_art")
    tok = build_tokenizer(task_corpus(catalog, ["public", "teacher"]), vocab_size=512)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    save_policy(model, proc, root / "sft_art" / "model")
    disc = build_discriminator(model, DiscriminatorConfig())
    save_discriminator(disc, proc, root / "dw_art" / "discriminator")
    examples = align_examples_from_rl(read_rl_parquet(catalog.rl, require_teacher=True))
    return {"root": root, "catalog": catalog, "proc": proc, "examples": examples}


def _fresh(env):
    model, proc = load_policy(env["root"] / "sft_art" / "model", dtype=torch.float32)
    disc = load_discriminator(env["root"] / "dw_art" / "discriminator", policy_processor=proc)
    return model, proc, disc


def _cfg(**kw) -> AlignConfig:
    base = dict(steps=2, prompts_per_step=2, n=2, max_new_tokens=24, actor_lr=1e-4, critic_lr=1e-4, save_every=0)
    base.update(kw)
    return AlignConfig(**base)


def _inputs(env, disc_art: Path | None = None, data_art: Path | None = None) -> dict[str, InputArtifact]:
    return {"policy": _art(env["root"] / "sft_art", "sft"),
            "discriminator": _art(disc_art or env["root"] / "dw_art", "disc_warmup"),
            "data": _art(data_art or env["root"] / "data_art", "data")}


class HalfValidEngine:
    """Samples from the policy, then replaces every other rollout by the prompt's teacher response (format-valid),
    without log-probs (the trainer recomputes them), so that the caption/cot losses have valid samples."""

    def __init__(self, model, proc, examples_by_text):
        self.inner = make_engine(model, proc, kind="hf")
        self.proc = proc
        self.by_text = examples_by_text
        self.im_end = disc_tokens(proc).im_end

    def generate(self, prompts, **kw):
        rolls = self.inner.generate(prompts, **kw)
        out = []
        for i, r in enumerate(rolls):
            if i % 2 == 0:
                ex = self.by_text[prompts[r.prompt_index].messages[-1]["content"]]
                text = ex.teacher_caption + "\n" + ex.teacher_cot
                ids = plain_ids(self.proc, text) + [self.im_end]
                r = Rollout(prompt_index=r.prompt_index, token_ids=ids, text=text, logprobs=None, finish_reason="stop")
            out.append(r)
        return out


def _finite(metrics: list[tuple[int, dict[str, float]]]) -> None:
    for step, m in metrics:
        bad = {k: v for k, v in m.items() if not math.isfinite(v)}
        assert not bad, (step, bad)


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("variant", ["prism", "gad"])
def test_stage_end_to_end(env, tmp_path, variant):
    from prism_lab.stages.align import run

    ctx = FakeCtx(config=_cfg(variant=variant), inputs=_inputs(env), out_dir=tmp_path)
    summary = run(ctx)
    assert summary["steps"] == 2 and summary["variant"] == variant
    assert [s for s, _ in ctx.metrics] == [1, 2]
    _finite(ctx.metrics)
    need = {"d_loss", "valid_ratio", "format_rate", "response_length", "nonfinite_scores", "actor/pg_loss"}
    need |= {"gap/response"} if variant == "gad" else {"gap/caption", "gap/cot", "score/teacher_caption",
                                                       "score/student_caption", "score/teacher_cot",
                                                       "score/student_cot"}
    assert need <= set(ctx.metrics[-1][1])
    model, proc = load_policy(tmp_path / "model")
    disc = load_discriminator(tmp_path / "discriminator", policy_processor=proc)
    assert disc.is_moe and not (tmp_path / "resume").exists()
    # both networks actually moved
    before, _ = load_policy(env["root"] / "sft_art" / "model")
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))


def test_valid_rollouts_give_pairwise_metrics(env):
    model, proc, disc = _fresh(env)
    by_text = {ex.messages[-1]["content"]: ex for ex in env["examples"]}
    logged: list[tuple[int, dict]] = []
    s = run_align(model, proc, disc, env["examples"], _cfg(n=4), log=lambda st, m: logged.append((st, m)),
                  engine=HalfValidEngine(model, proc, by_text))
    _finite(logged)
    for _, m in logged:
        assert m["valid_ratio"] == pytest.approx(0.5) and m["format_rate"] == pytest.approx(0.5)
        assert {"d_acc", "cap_acc", "cot_acc"} <= set(m) and m["d_has_valid"] == 1.0
        assert abs(m["actor/ppo_kl"]) < 1e-4  # recomputed old log-probs: on-policy, ratio == 1
        # invalid rollouts carry the -1.5 format penalty: the advantage mean is negative
        assert m["adv/mean"] < 0
    assert s["final"]["d_acc"] is not None


# ------------------------------------------------------------------------------------------ resume
def test_resume_continues_from_saved_step(env, tmp_path):
    cfg = _cfg(steps=3, save_every=1)

    class Stop(Exception):
        pass

    def stop_at_2(step, m):
        if step == 2:
            raise Stop

    model, proc, disc = _fresh(env)
    with pytest.raises(Stop):
        run_align(model, proc, disc, env["examples"], cfg, out_dir=tmp_path, log=stop_at_2)
    assert (tmp_path / "resume" / "state.json").is_file()
    model, proc, disc = _fresh(env)
    steps: list[int] = []
    s = run_align(model, proc, disc, env["examples"], cfg, out_dir=tmp_path, log=lambda st, m: steps.append(st))
    assert s["resumed_from"] == 1 and steps == [2, 3] and not (tmp_path / "resume").exists()
    # identical to an uninterrupted run
    m2, _, d2 = _fresh(env)
    run_align(m2, proc, d2, env["examples"], cfg)
    for a, b in zip(model.parameters(), m2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(disc.parameters(), d2.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ bad inputs
def test_missing_teacher_fields_is_a_clear_error(env, tmp_path):
    from prism_lab.stages.align import run

    art = tmp_path / "data_art"
    shutil.copytree(env["root"] / "data_art", art)
    rl = Path(DataCatalog.load(art).rl)
    table = pq.read_table(rl)
    col = table.column("teacher_cot").to_pylist()
    col[3] = ""
    table = table.set_column(table.schema.get_field_index("teacher_cot"), "teacher_cot",
                             __import__("pyarrow").array(col, type=table.schema.field("teacher_cot").type))
    pq.write_table(table, rl)
    ctx = FakeCtx(config=_cfg(), inputs=_inputs(env, data_art=art), out_dir=tmp_path / "out")
    with pytest.raises(DataError, match=r"row 3: field 'teacher_cot'"):
        run(ctx)
    # direct callers get the same check
    ex = env["examples"][0]
    bad = AlignExample(index=0, messages=ex.messages, load_images=ex.load_images, teacher_caption=ex.teacher_caption,
                       teacher_cot="  ", where="mem: row 0")
    model, proc, disc = _fresh(env)
    with pytest.raises(DataError, match="teacher_cot"):
        run_align(model, proc, disc, [bad], _cfg())


def test_discriminator_from_another_tokenizer_is_rejected(env, tmp_path):
    from prism_lab.stages.align import run

    tok2 = build_tokenizer(["a completely different corpus of words", "with other merges 123"] * 20, vocab_size=300)
    m2, p2 = build_tiny_policy("tiny-xs", tok2, seed=1)
    save_discriminator(build_discriminator(m2, DiscriminatorConfig()), p2, tmp_path / "dw2" / "discriminator")
    ctx = FakeCtx(config=_cfg(), inputs=_inputs(env, disc_art=tmp_path / "dw2"), out_dir=tmp_path / "out")
    with pytest.raises(CheckpointError, match="tokenizer vocabulary differs"):
        run(ctx)


def test_nan_scores_are_replaced_and_counted(env):
    model, proc, disc = _fresh(env)
    by_text = {ex.messages[-1]["content"]: ex for ex in env["examples"]}

    def poison_row0(_module, _inp, out):
        out = out.clone()
        out[0] = float("nan")
        return out

    h = disc.head.register_forward_hook(poison_row0)
    logged: list[dict] = []
    run_align(model, proc, disc, env["examples"], _cfg(steps=1, n=4), log=lambda st, m: logged.append(m),
              engine=HalfValidEngine(model, proc, by_text))
    h.remove()
    m = logged[0]
    assert m["nonfinite_scores"] > 0 and m["d_skipped"] == 0 and m["actor/skipped_updates"] == 0
    _finite([(1, m)])
    assert all(torch.isfinite(p).all() for p in disc.parameters())

    # all scores NaN (poisoned head): counted, the discriminator update is skipped, the actor still trains
    model, proc, disc = _fresh(env)
    with torch.no_grad():
        disc.head.v_head[1].weight.fill_(float("nan"))
    logged.clear()
    run_align(model, proc, disc, env["examples"], _cfg(steps=1), log=lambda st, m: logged.append(m))
    m = logged[0]
    assert m["nonfinite_scores"] >= 4 * 2 and m["d_skipped"] == 1 and m["actor/skipped_updates"] == 0


def test_the_actor_token_budget_cuts_the_update_and_leaves_the_training_unchanged(env, monkeypatch):
    """`actor_max_tokens_per_micro_batch` reaches the actor's micro-batching (one row per micro-batch at a budget of
    one token) and the trained policy equals the one of row micro-batches."""
    import prism_lab.trainers.align as align_mod

    budgets = []
    real = align_mod.micro_batches

    def spying(*a, **kw):
        out = real(*a, **kw)
        budgets.append((kw["max_tokens"], len(out)))
        return out

    monkeypatch.setattr(align_mod, "micro_batches", spying)
    trained = []
    for extra in ({}, {"actor_max_tokens_per_micro_batch": 1}):
        model, proc, disc = _fresh(env)
        run_align(model, proc, disc, env["examples"], _cfg(steps=1, **extra))
        trained.append([p.detach().clone() for p in model.parameters()])
    assert budgets[0][0] is None and budgets[-1] == (1, 4)  # 2 prompts x 2 rollouts, each alone
    for a, b in zip(*trained):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_the_discriminator_token_budget_cuts_its_forwards_and_leaves_the_training_unchanged(env, monkeypatch):
    """`disc_max_tokens_per_micro_batch` replaces `disc_micro_batch` rows: at a budget of one token every scored
    sequence is a forward of its own, and the trained discriminator and policy equal those of row micro-batches
    (the score head's dropout off: its masks depend on the batch shapes, with any micro-batching)."""
    import prism_lab.trainers.align_variants as variants_mod

    rows_per_forward: list[list[int]] = []
    real = variants_mod.score_segments

    def spying(disc, pb, rows, segments, **kw):
        rows_per_forward[-1].append(len(rows))
        return real(disc, pb, rows, segments, **kw)

    monkeypatch.setattr(variants_mod, "score_segments", spying)
    trained = []
    for extra in ({}, {"disc_max_tokens_per_micro_batch": 1}):
        rows_per_forward.append([])
        model, proc, disc = _fresh(env)
        for m in disc.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        run_align(model, proc, disc, env["examples"], _cfg(steps=1, **extra))
        trained.append([p.detach().clone() for m in (disc, model) for p in m.parameters()])
    assert max(rows_per_forward[0]) > 1 and set(rows_per_forward[1]) == {1}
    assert sum(rows_per_forward[0]) == sum(rows_per_forward[1])  # the same sequences scored
    for a, b in zip(*trained):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_alignment_rolls_out_through_a_colocated_engine(env):
    """The colocated engine around a recording test double of vLLM (tests.fakes; it proves what the trainer does
    with an engine's answers, nothing about vLLM): one sync per step, before the rollout, and log-probs that differ
    from the policy's do not steer the update (the actor checks them against its own forward: the PPO KL stays ~0)."""
    from prism_lab.rollout.colocate import ColocatedEngine
    from tests.fakes import RecordingEngine

    model, proc, disc = _fresh(env)
    by_text = {ex.messages[-1]["content"]: ex for ex in env["examples"]}
    half = HalfValidEngine(model, proc, by_text)

    def reply(prompts, **kw):  # the policy's rollouts, with log-probs of another distribution
        import dataclasses

        return [dataclasses.replace(r, logprobs=[-5.0] * len(r.token_ids)) for r in half.generate(prompts, **kw)]

    fake = RecordingEngine(reply=reply)
    logged: list[tuple[int, dict]] = []
    run_align(model, proc, disc, env["examples"], _cfg(n=4), log=lambda st, m: logged.append((st, m)),
              engine=ColocatedEngine(fake, model, device=torch.device("cpu")))
    one = ["wake_weights", "sync", "wake_kv_cache", "generate", "sleep"]
    assert fake.phases() == ["sleep", *one, *one]
    _finite(logged)
    for _, m in logged:
        assert abs(m["actor/ppo_kl"]) < 1e-4
