"""Drift measurements: the KL estimator by hand, teacher NLL against the model's own loss, KL = 0 for the
base against itself and > 0 after an update, the chain's base and discriminator found through the
ledger, and the eval stage's drift metrics end to end on tiny real models."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prism_lab.harness.ledger import Ledger
from prism_lab.trainers.drift import kl_estimate


def test_kl_estimate_by_hand():
    base = [[-1.0, -2.0], [-0.5]]
    ckpt = [[-1.5, -2.0], [-1.0]]
    r = kl_estimate(base, ckpt)
    # log-ratios: (0.5 + 0) and 0.5 -> total 1.0 over 3 tokens; per sequence (0.5 + 0.5) / 2
    assert r["kl_per_token"] == pytest.approx(1.0 / 3) and r["kl_per_sequence"] == pytest.approx(0.5)
    assert r["tokens"] == 3
    assert math.isnan(kl_estimate([], [])["kl_per_token"])
    with pytest.raises(ValueError, match="sequence 0"):
        kl_estimate([[-1.0]], [[-1.0, -2.0]])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic data with held-out rows, a tiny base, an 'SFT' model (the base after a few SGD steps), a
    discriminator, and a ledger chain data -> sft -> align -> rl with eval runs."""
    from prism_lab.config.align import DiscriminatorConfig
    from prism_lab.data.catalog import synth_catalog
    from prism_lab.data.synth.config import SynthConfig
    from prism_lab.data.synth.files import corpus_texts
    from prism_lab.data.synth.generate import generate
    from prism_lab.models import build_tiny_policy, build_tokenizer, save_policy
    from prism_lab.models.discriminator import build_discriminator, save_discriminator

    d = tmp_path_factory.mktemp("drift")
    generate(SynthConfig(n_sft_public=10, n_teacher=5, n_rl=4, n_warmup=4, n_bench=4, n_heldout=6, n_text=0,
                         include_system_prompt=False), d / "data" / "data")
    synth_catalog("data", heldout=True).save(d / "data")
    tok = build_tokenizer(list(corpus_texts(d / "data" / "data")), vocab_size=400)
    model, proc = build_tiny_policy("tiny-xs", tok, seed=0)
    save_policy(model, proc, d / "sft" / "base")
    with torch.no_grad():  # "training": move every weight a little
        g = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    save_policy(model, proc, d / "sft" / "model")
    save_policy(model, proc, d / "align" / "model")
    save_discriminator(build_discriminator(model, DiscriminatorConfig()), proc, d / "align" / "discriminator")
    save_policy(model, proc, d / "rl" / "model")
    led = Ledger(d / "root")
    for key, kind, inputs, cfg in [("data", "data", {}, {}), ("sft", "sft", {"data": "data"}, {"model": "tiny-xs"}),
                                   ("align", "align", {"policy": "sft", "data": "data"}, {}),
                                   ("rl", "rl", {"policy": "align", "data": "data"}, {}),
                                   ("ev-sft", "eval", {"checkpoint": "sft", "data": "data"}, {}),
                                   ("ev-rl", "eval", {"checkpoint": "rl", "data": "data"}, {})]:
        led.add_run(key, kind, key, cfg, inputs)
        if kind != "eval":
            led.mark_done(key, str(d / key))
    return SimpleNamespace(dir=d, ledger=led)


def test_chain_start_and_discriminator_from_the_ledger(world, tmp_path):
    from prism_lab.stages.lineage import chain_discriminator, chain_start

    d, led = world.dir, world.ledger
    for key in ("ev-sft", "ev-rl", "rl", "align"):
        origin = chain_start(led, key)
        assert origin.path == d / "sft" / "base" and origin.identity == "sft:base"
    assert chain_discriminator(led, "ev-sft") is None
    assert chain_discriminator(led, "ev-rl") == d / "align" / "discriminator"
    # a fine-tuned hub/local model: the base is the model the SFT config names
    led.add_run("sft2", "sft", "sft2", {"model": str(d / "sft" / "model")}, {"data": "data"})
    led.mark_done("sft2", str(tmp_path / "nothing-saved-here"))
    led.add_run("ev2", "eval", "ev2", {}, {"checkpoint": "sft2"})
    assert chain_start(led, "ev2").path == d / "sft" / "model"
    led.add_run("ext", "checkpoint", "ext", {"path": "/x"}, {})
    led.add_run("ev3", "eval", "ev3", {}, {"checkpoint": "ext"})
    assert chain_start(led, "ev3") is None  # a checkpoint evaluated outside any chain


def test_teacher_nll_is_the_models_own_loss_and_kl_is_zero_against_itself(world):
    from prism_lab.data.collate import SFTCollator
    from prism_lab.data.sft_json import read_sft_json
    from prism_lab.models import load_policy
    from prism_lab.trainers.drift import base_samples, heldout_prompts, sequence_logprobs, teacher_nll

    d = world.dir
    ex = read_sft_json(d / "data" / "data" / "sft_heldout.json", image_root=d / "data" / "data")[:3]
    base, proc = load_policy(d / "sft" / "base")
    r = teacher_nll(base, proc, ex, batch_size=2)
    batch = SFTCollator(proc)(ex)
    with torch.no_grad():
        loss = base(**batch).loss  # transformers' mean token cross-entropy over the label tokens
    assert r["teacher_nll"] == pytest.approx(float(loss), rel=1e-4) and r["teacher_tokens"] > 0

    prompts = heldout_prompts(ex)
    assert all(p.messages[-1]["role"] == "user" and len(p.images) == 1 for p in prompts)
    samples = base_samples(base, proc, prompts, max_new_tokens=12, seed=0, batch_size=2)
    lp_base = sequence_logprobs(base, proc, prompts, samples, batch_size=2)
    assert [len(x) for x in lp_base] == [len(s) for s in samples]
    assert kl_estimate(lp_base, sequence_logprobs(base, proc, prompts, samples, batch_size=3))["kl_per_token"] == \
        pytest.approx(0.0, abs=1e-5)  # batch composition does not change log-probs
    tuned, _ = load_policy(d / "sft" / "model")
    assert kl_estimate(lp_base, sequence_logprobs(tuned, proc, prompts, samples))["kl_per_token"] > 1e-3


def test_eval_stage_drift_metrics(world):
    from prism_lab.config.eval import EvalConfig
    from prism_lab.harness.context import InputArtifact
    from prism_lab.stages.drift import CACHE_SUBDIR, measure_drift

    d, led = world.dir, world.ledger
    cfg = EvalConfig(drift_items=4, drift_max_new_tokens=16, batch_size=4)

    def ctx(key: str, ckpt: str):
        inputs = {"data": InputArtifact("data", "data", d / "data", {}),
                  "checkpoint": InputArtifact(ckpt, ckpt, d / ckpt, {})}
        return SimpleNamespace(key=key, ledger=led, root=d / "root", log=logging.getLogger("test.drift"),
                               inputs=inputs, input=inputs.__getitem__)

    sft = measure_drift(ctx("ev-sft", "sft"), cfg, d / "sft" / "model")
    assert set(sft) == {"drift/teacher_nll", "drift/kl_from_base", "drift/base_teacher_nll"}  # no discriminator
    assert sft["drift/kl_from_base"] > 0 and sft["drift/teacher_nll"] != sft["drift/base_teacher_nll"]
    assert len(list((d / "root" / CACHE_SUBDIR).glob("*.json"))) == 1
    rl = measure_drift(ctx("ev-rl", "rl"), cfg, d / "rl" / "model")
    assert len(list((d / "root" / CACHE_SUBDIR).glob("*.json"))) == 1  # the base's samples were reused
    # rl holds the same weights as sft: same distances; its chain has a discriminator
    assert rl["drift/kl_from_base"] == pytest.approx(sft["drift/kl_from_base"], abs=1e-6)
    assert rl["drift/base_teacher_nll"] == pytest.approx(sft["drift/base_teacher_nll"])
    assert {"drift/disc_gap_caption", "drift/disc_gap_cot"} <= set(rl)
    assert all(math.isfinite(v) for v in rl.values())


def test_no_heldout_rows_means_no_drift_metrics(world, tmp_path, caplog):
    from prism_lab.config.eval import EvalConfig
    from prism_lab.data.catalog import DataCatalog
    from prism_lab.harness.context import InputArtifact
    from prism_lab.stages.drift import measure_drift

    DataCatalog(sft_heldout=[]).save(tmp_path)
    art = InputArtifact("data", "data", tmp_path, {})
    c = SimpleNamespace(key="ev-sft", ledger=world.ledger, root=tmp_path, log=logging.getLogger("test.drift"),
                        inputs={"data": art}, input=lambda role: art)
    with caplog.at_level(logging.INFO, logger="test.drift"):
        assert measure_drift(c, EvalConfig(), Path(world.dir / "sft" / "model")) == {}
    assert "no held-out teacher rows" in caplog.text
