"""The `base` stage: planned once per size for every seed, trained in three phases (the vision tower alone, captions,
then captions and instruction rows), resumable across the phase boundaries, and the chain's base for SFT and the drift
measurements."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from prism_lab.harness.planning import build_plan, load_grid

REPO = Path(__file__).resolve().parents[2]


def _grid(tmp_path: Path, extra: str = "") -> Path:
    g = tmp_path / "g.yaml"
    g.write_text(f"extends: {REPO / 'experiments' / 'smoke.yaml'}\nname: g\naxes:\n  size: [4b]\n  algorithm: [grpo]\n"
                 f"  alignment: [none, prism]\n  seed: [0, 1, 2]\n{extra}")
    return g


def test_one_base_run_per_size_shared_by_every_seed_and_sft_starts_from_it(tmp_path):
    plan = build_plan(load_grid(_grid(tmp_path)))
    bases = [r for r in plan.runs.values() if r.kind == "base"]
    assert len(bases) == 1 and bases[0].config["seed"] == 0  # its own seed, not the axis
    base_evals = [r for r in plan.runs.values() if r.kind == "eval" and r.inputs.get("checkpoint") == bases[0].key]
    assert len(base_evals) == 1
    sfts = [r for r in plan.runs.values() if r.kind == "sft"]
    assert len(sfts) == 3 and {r.inputs["policy"] for r in sfts} == {bases[0].key}
    assert len({r.key for r in sfts}) == 3  # the seeds still differ downstream of the base


def test_base_in_seed_scope_gives_one_base_per_seed(tmp_path):
    scope = "seed_scope: [base, sft, disc_warmup, align, rl, eval]\n"
    plan = build_plan(load_grid(_grid(tmp_path, scope)))
    bases = [r for r in plan.runs.values() if r.kind == "base"]
    assert sorted(r.config["seed"] for r in bases) == [0, 1, 2]


def test_base_model_is_set_by_the_pipeline(tmp_path):
    from prism_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="stages.base.model"):
        load_grid(_grid(tmp_path, "stages:\n  base:\n    model: tiny-s\n"))


@pytest.mark.parametrize("field,value", [("vision_steps", -1), ("vision_steps", "many"), ("vision_lr", 0)])
def test_bad_vision_phase_settings_are_refused_naming_the_field(tmp_path, field, value):
    from prism_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"stages\.base\.{field}"):
        load_grid(_grid(tmp_path, f"stages:\n  base:\n    {field}: {value}\n"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from prism_lab.data.catalog import synth_catalog
    from prism_lab.data.synth.config import SynthConfig
    from prism_lab.data.synth.generate import generate

    d = tmp_path_factory.mktemp("base_data")
    generate(SynthConfig(n_sft_public=8, n_teacher=4, n_caption=12, n_instruct=12, n_rl=4, n_warmup=4, n_bench=4,
                         n_heldout=0, n_text=0, include_system_prompt=False), d / "data")
    synth_catalog("data", caption=True, instruct=True).save(d)
    return d


def _ctx(data: Path, out: Path, cfg, on_metrics=None):
    from prism_lab.harness.context import InputArtifact

    logged: list[tuple[int, dict]] = []

    def log_metrics(step, values):
        logged.append((step, values))
        if on_metrics is not None:
            on_metrics(step)

    inputs = {"data": InputArtifact("data", "data", data, {})}
    out.mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(config=cfg, inputs=inputs, input=inputs.__getitem__, out_dir=out, log_metrics=log_metrics,
                           heartbeat=lambda: None, logged=logged)


def _cfg(**kw):
    from prism_lab.config.pretrain import BaseStageConfig

    return BaseStageConfig(model="tiny-xs", caption_steps=3, max_steps=4, batch_size=4, log_every=1, save_every=1,
                           tokenizer_vocab_size=300, threads=1, **kw)


class Killed(RuntimeError):
    pass


def _kill_and_restart(data_dir: Path, out: Path, cfg, *, at_step: int, kept: str):
    """Run the base stage killed when it logs ``at_step``, check the finished phase ``kept`` is on disk, run it
    again: (the second run's context, its summary)."""
    from prism_lab.stages import base

    def kill(step):
        if step == at_step:
            raise Killed

    with pytest.raises(Killed):
        base.run(_ctx(data_dir, out, cfg, on_metrics=kill))
    assert (out / kept / "config.json").is_file()
    again = _ctx(data_dir, out, cfg)
    return again, base.run(again)


def test_base_trains_captions_then_the_mix_and_resumes_after_the_caption_phase(data_dir, tmp_path):
    import torch

    from prism_lab.models import load_policy
    from prism_lab.prompts import Prompting
    from prism_lab.stages import base

    whole = _ctx(data_dir, tmp_path / "whole", _cfg())
    summary = base.run(whole)
    assert summary["steps"] == 7 and summary["phases"]["captions"]["steps"] == 3
    assert [s for s, v in whole.logged if "loss" in v] == list(range(1, 8))  # one step axis over both phases
    assert not (tmp_path / "whole" / base.CAPTIONS_SUBDIR).exists() and not (tmp_path / "whole" / "resume").exists()
    assert Prompting.from_checkpoint(tmp_path / "whole" / "model") == Prompting(system_prompt=False,
                                                                                 yesno_instruction=False)

    again, resumed = _kill_and_restart(data_dir, tmp_path / "killed", _cfg(), at_step=5,
                                       kept=base.CAPTIONS_SUBDIR)
    assert resumed["restarted_after"] == "captions" and "captions" not in resumed["phases"]
    assert min(s for s, _ in again.logged) > 3  # the caption phase was not trained again
    a, _ = load_policy(tmp_path / "whole" / "model")
    b, _ = load_policy(tmp_path / "killed" / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    worst = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    assert worst <= 1e-6, worst  # same weights as the uninterrupted run (same thread count)
    from prism_lab.data.catalog import DataCatalog
    from prism_lab.stages.sft import build_policy

    init = build_policy(_cfg(), DataCatalog.load(data_dir))[0].state_dict()
    assert any(not torch.equal(sa[k], init[k]) for k in sa if k in init)  # it trained


def _max_diff(a_dir: Path, b_dir: Path) -> float:
    from prism_lab.models import load_policy

    sa, sb = load_policy(a_dir)[0].state_dict(), load_policy(b_dir)[0].state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def test_the_vision_phase_trains_the_tower_first_and_a_restart_keeps_it(data_dir, tmp_path):
    from prism_lab.stages import base

    cfg = _cfg(vision_steps=3)
    whole = _ctx(data_dir, tmp_path / "whole", cfg)
    summary = base.run(whole)
    assert summary["steps"] == 10 and summary["phases"]["vision"]["steps"] == 3
    assert [s for s, v in whole.logged if "vision/loss" in v] == [3]
    assert [s for s, v in whole.logged if "loss" in v] == list(range(4, 11))  # captions, then the mix, after it
    assert {"vision/heldout_count_acc", "vision/heldout_presence_acc"} <= {k for _, v in whole.logged for k in v}
    assert not (tmp_path / "whole" / base.VISION_SUBDIR).exists()

    again, resumed = _kill_and_restart(data_dir, tmp_path / "killed", cfg, at_step=5, kept=base.VISION_SUBDIR)
    assert resumed["restarted_after"] == "vision" and "vision" not in resumed["phases"]
    assert not any("vision/loss" in v for _, v in again.logged)
    worst = _max_diff(tmp_path / "whole" / "model", tmp_path / "killed" / "model")
    assert worst <= 1e-6, worst


def test_the_vision_phase_changes_the_tower_and_nothing_else(data_dir, tmp_path):
    import torch

    from prism_lab.data.catalog import DataCatalog
    from prism_lab.stages.sft import build_policy, load_examples
    from prism_lab.trainers.vision_tags import VisionTagSettings, train_vision_tags

    catalog = DataCatalog.load(data_dir)
    model, processor, _ = build_policy(_cfg(), catalog)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = train_vision_tags(model, processor, load_examples(catalog, ["caption"]),
                            VisionTagSettings(steps=2, lr=1e-2, batch_size=4, seed=0))
    assert out["kinds"] >= 2 and out["heldout"] == 1 and 0.0 <= out["presence_acc"] <= 1.0
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".visual." in f".{k}" for k in changed), sorted(changed)[:5]
    assert any("deepstack" in k for k in changed) and any("patch_embed" in k for k in changed)


def test_chain_start_of_a_chain_with_a_base_run(tmp_path):
    from prism_lab.harness.ledger import Ledger
    from prism_lab.stages.lineage import chain_start

    (tmp_path / "base" / "model").mkdir(parents=True)
    (tmp_path / "base" / "model" / "config.json").write_text("{}")
    led = Ledger(tmp_path / "root")
    for key, kind, inputs, cfg in [("data", "data", {}, {}), ("base", "base", {"data": "data"}, {"model": "tiny-xs"}),
                                   ("sft", "sft", {"data": "data", "policy": "base"}, {"model": "tiny-xs"}),
                                   ("ev", "eval", {"checkpoint": "sft", "data": "data"}, {}),
                                   ("evb", "eval", {"checkpoint": "base", "data": "data"}, {})]:
        led.add_run(key, kind, key, cfg, inputs)
        if kind != "eval":
            led.mark_done(key, str(tmp_path / key))
    for key in ("ev", "evb", "sft"):
        origin = chain_start(led, key)
        assert origin is not None and origin.path == tmp_path / "base" / "model"


def test_sft_sets_missing_from_the_data_are_refused_at_plan_time(tmp_path):
    from prism_lab.errors import ConfigError

    with pytest.raises(ConfigError, match=r"stages\.base\.datasets\[1\]: the synthetic data has no 'instruct' rows: "
                                          r"set data\.synth\.n_instruct > 0"):
        load_grid(_grid(tmp_path, "data:\n  synth:\n    n_instruct: 0\n"))
    local = ("data:\n  source: local\n  local:\n    sft: [sft.json]\n    rl: rl.parquet\n    warmup: w.jsonl\n"
             "    image_root: .\n")
    with pytest.raises(ConfigError, match=r"stages\.base\.datasets\[0\]: 'caption' rows exist only in synthetic data"):
        load_grid(_grid(tmp_path, local))


def test_vision_and_caption_phases_need_caption_rows(tmp_path):
    from prism_lab.errors import ConfigError

    extra = ("data:\n  synth:\n    n_caption: 0\nstages:\n  base:\n    datasets: [instruct]\n    caption_steps: 0\n"
             "    vision_steps: 5\n")
    with pytest.raises(ConfigError, match=r"stages\.base\.vision_steps: the vision and caption phases read the caption "
                                          r"rows: set data\.synth\.n_caption > 0"):
        load_grid(_grid(tmp_path, extra))
    load_grid(_grid(tmp_path, extra.replace("vision_steps: 5", "vision_steps: 0")))  # no phase reads them


def test_the_command_line_refuses_it_with_one_line_and_writes_nothing(tmp_path):
    from tests.conftest import run_cli

    grid = _grid(tmp_path, "data:\n  synth:\n    n_caption: 0\n")
    res = run_cli("sweep", "run", str(grid), "--root", str(tmp_path / "root"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "stages.base.datasets[0]" in lines[0], res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "root").exists()


def test_the_base_tokenizer_is_trained_on_its_own_files_not_on_the_sft_mixture(data_dir, tmp_path):
    import json
    import shutil

    from prism_lab.data.catalog import DataCatalog
    from prism_lab.stages.sft import build_policy

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    public = copy / "data" / "sft_public.json"
    rows = json.loads(public.read_text())
    for row in rows:  # other public answers, in words the base files never use
        row["messages"][-1]["content"] = "<think>\nzebra quokka xylophone zebra quokka\n</think>\n<answer>\n7\n</answer>"
    public.write_text(json.dumps(rows))

    def vocab(cfg, d):
        return build_policy(cfg, DataCatalog.load(d))[1].tokenizer.get_vocab()

    assert vocab(_cfg(), copy) == vocab(_cfg(), data_dir)
    sft_cfg = _cfg().model_copy(update={"datasets": ["public", "teacher"]})
    assert vocab(sft_cfg, copy) != vocab(sft_cfg, data_dir)  # a model built for SFT from a preset learns its rows' words
