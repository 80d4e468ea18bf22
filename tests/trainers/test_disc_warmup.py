"""Discriminator warmup (docs/prism_method.md §5): scored-sequence builders, the stage end to end, learning on a
separable toy set, the ablation kinds, and resuming."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prism_lab.config.align import DiscriminatorConfig, DiscWarmupConfig
from prism_lab.data.catalog import DataCatalog, synth_catalog
from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.generate import generate
from prism_lab.data.warmup_jsonl import read_warmup_jsonl
from prism_lab.harness.context import InputArtifact
from prism_lab.models import build_tiny_policy, build_tokenizer, save_policy
from prism_lab.models.discriminator import build_discriminator, load_discriminator
from prism_lab.prompts import format_response
from prism_lab.trainers.disc_inputs import (
    disc_tokens,
    online_student_segment,
    online_teacher_segment,
    plain_ids,
    split_rollout,
    warmup_segment,
)
from prism_lab.trainers.disc_warmup import run_disc_warmup
from prism_lab.trainers.warmup_pairs import Comparison, build_comparisons, heldout_split
from tests.fakes import FakeCtx

SMALL = dict(n_sft_public=16, n_teacher=8, n_rl=8, n_warmup=12, n_bench=4, include_system_prompt=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from prism_lab.stages.sft import task_corpus

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("warm")
    generate(SynthConfig(**SMALL), root / "data_art" / "data")
    synth_catalog("data").save(root / "data_art")
    catalog = DataCatalog.load(root / "data_art")
    tok = build_tokenizer(task_corpus(catalog, ["public", "teacher"]), vocab_size=512)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    save_policy(model, proc, root / "sft_art" / "model")
    return {"root": root, "catalog": catalog, "model": model, "proc": proc}


def _art(path: Path, kind: str) -> InputArtifact:
    return InputArtifact(key=kind * 4, kind=kind, path=path, config={})


# ------------------------------------------------------------------------------------------ builders
def test_segment_conventions_and_split(env):
    proc = env["proc"]
    toks = disc_tokens(proc)
    tok = proc.tokenizer
    assert toks.turn_suffix[0] == toks.im_end and tok.decode(list(toks.turn_suffix)) == "<|im_end|>\n"
    ids = plain_ids(proc, "<caption>\n- a\n</caption>")
    assert warmup_segment(ids, toks, "original")[-2:] == list(toks.turn_suffix)
    assert warmup_segment(ids + [toks.im_end], toks, "uniform") == ids + [toks.im_end]
    assert online_teacher_segment(ids, toks, "original") == ids + [toks.pad]
    assert online_teacher_segment(ids, toks, "uniform") == ids + [toks.im_end]
    resp = format_response("- 2 red circles", "2 plus 1", "3")
    rid = plain_ids(proc, resp) + [toks.im_end]
    sp = split_rollout(proc, rid)
    assert sp.valid and sp.caption_ids + sp.cot_ids == rid
    assert tok.decode(sp.caption_ids).endswith("</caption>")
    assert online_student_segment(sp.cot_ids, toks, "original")[-1] == toks.im_end
    assert online_student_segment(sp.caption_ids, toks, "uniform")[-1] == toks.im_end
    bad = split_rollout(proc, plain_ids(proc, "no format here at all"))
    assert not bad.valid and bad.boundary == max(1, len(plain_ids(proc, "no format here at all")) // 2)


def test_heldout_split_by_line():
    comps = [Comparison(k, "q", None, [1], [2], group=g) for g in range(10) for k in ("caption", "cot")]
    train, held = heldout_split(comps, 0.2, seed=0)
    assert len(held) == 4 and not ({c.group for c in train} & {c.group for c in held})


# ------------------------------------------------------------------------------------------ stage
def test_stage_policy_students_writes_loadable_discriminator(env, tmp_path):
    from prism_lab.stages.disc_warmup import run

    cfg = DiscWarmupConfig(lr=1e-4, batch_size=2, grad_accum=2, heldout_fraction=0.25, student_source="policy",
                           max_pairs=16)
    ctx = FakeCtx(config=cfg, inputs={"policy": _art(env["root"] / "sft_art", "sft"),
                                      "data": _art(env["root"] / "data_art", "data")}, out_dir=tmp_path)
    summary = run(ctx)
    assert summary["steps"] >= 2 and summary["final_heldout_acc"] is not None
    assert 0.0 <= summary["final_train_acc"] <= 1.0
    assert 0.0 <= summary["data/student_invalid_rate"] <= 1.0  # random policy: invalid students are kept
    assert (tmp_path / "students.jsonl").is_file() and not (tmp_path / "resume").exists()
    names = set().union(*(m.keys() for _, m in ctx.metrics))
    assert {"warmup/loss", "warmup/acc", "warmup/aux", "warmup/heldout_acc"} <= names
    for _, m in ctx.metrics:
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values())
    disc = load_discriminator(tmp_path / "discriminator", policy_processor=env["proc"])
    assert disc.is_moe and disc.kind == "moe"


# ------------------------------------------------------------------------------------------ learning
def _toy_comparisons(env, n_lines: int = 12) -> list[Comparison]:
    proc = env["proc"]
    pairs, _ = read_warmup_jsonl(env["catalog"].warmup)
    comps, _ = build_comparisons(pairs[: 2 * n_lines], proc, student_source="dataset")
    garbage = plain_ids(proc, "zz qq zz qq zz qq zz")
    for c in comps:  # teacher vs clearly separable garbage student
        c.student_ids = list(garbage)
    return comps


def test_separable_toy_accuracy_rises_above_chance(env):
    disc = build_discriminator(env["model"], DiscriminatorConfig())
    cfg = DiscWarmupConfig(lr=1e-3, batch_size=4, grad_accum=1, epochs=3, heldout_fraction=0.25,
                           student_source="dataset")
    logged: list[dict] = []
    s = run_disc_warmup(disc, env["proc"], _toy_comparisons(env), cfg, log=lambda st, m: logged.append(m),
                        eval_points=2)
    assert s["final_heldout_acc"] >= 0.9, s
    assert s["final_train_acc"] >= 0.75, s
    losses = [m["warmup/loss"] for m in logged if "warmup/loss" in m]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", ["dense", "text_only"])
def test_ablation_kinds_train(env, kind):
    disc = build_discriminator(env["model"], DiscriminatorConfig(kind=kind))
    cfg = DiscWarmupConfig(lr=1e-3, batch_size=2, grad_accum=1, heldout_fraction=0.25, student_source="dataset")
    s = run_disc_warmup(disc, env["proc"], _toy_comparisons(env, 4), cfg, eval_points=1, max_steps=2,
                        terminator="uniform", positions="text_1d")
    assert s["steps"] == 2 and s["final_heldout_acc"] is not None


def test_resume_continues_from_saved_step(env, tmp_path):
    cfg = DiscWarmupConfig(lr=1e-3, batch_size=2, grad_accum=1, heldout_fraction=0.25, student_source="dataset")
    comps = _toy_comparisons(env, 6)

    class Stop(Exception):
        pass

    def stop_at_3(step, m):
        if step == 3 and "warmup/loss" in m:
            raise Stop

    d1 = build_discriminator(env["model"], DiscriminatorConfig())
    with pytest.raises(Stop):
        run_disc_warmup(d1, env["proc"], comps, cfg, out_dir=tmp_path, log=stop_at_3, eval_points=0,
                        save_every=1, max_steps=4)
    assert (tmp_path / "resume").is_dir()
    steps: list[int] = []
    d2 = build_discriminator(env["model"], DiscriminatorConfig())
    s = run_disc_warmup(d2, env["proc"], comps, cfg, out_dir=tmp_path, eval_points=0, save_every=1, max_steps=4,
                        log=lambda st, m: steps.append(st) if "warmup/loss" in m else None)
    assert s["resumed_from"] == 2 and steps == [3, 4]
    d3 = build_discriminator(env["model"], DiscriminatorConfig())
    run_disc_warmup(d3, env["proc"], comps, cfg, eval_points=0, max_steps=4)
    for (n, a), (_, b) in zip(d2.named_parameters(), d3.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
