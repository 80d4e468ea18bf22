"""Every knob of alignment is a config field a grid can set (issue 30 item 2), and adding them kept the run keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism_lab.config.align import AlignConfig, DiscWarmupConfig
from prism_lab.errors import ConfigError
from prism_lab.harness.planning import build_plan, load_grid
from tests.conftest import REPO

KNOBS = {"actor_micro_batch": 3, "disc_micro_batch": 5, "rollout_batch_size": 8, "rollout_engine": "hf",
         "precision": "bf16", "actor_max_tokens_per_micro_batch": 64, "log_prob_max_tokens_per_micro_batch": 96,
         "disc_max_tokens_per_micro_batch": 128}


def _grid(tmp_path: Path, align: str) -> Path:
    g = tmp_path / "g.yaml"
    g.write_text(f"extends: {REPO / 'experiments' / 'smoke.yaml'}\nname: g\naxes:\n  size: [4b]\n  algorithm: [grpo]\n"
                 f"  alignment: [none, prism]\n  seed: [0]\nstages:\n  align:\n{align}")
    return g


def test_a_grid_sets_the_alignment_knobs(tmp_path):
    lines = "".join(f"    {k}: {v}\n" for k, v in KNOBS.items())
    plan = build_plan(load_grid(_grid(tmp_path, lines)))
    (run,) = [r for r in plan.runs.values() if r.kind == "align"]
    cfg = AlignConfig.model_validate(run.config)  # what the stage process reads back
    assert {k: getattr(cfg, k) for k in KNOBS} == KNOBS


@pytest.mark.parametrize("field,value", [("actor_micro_batch", 0), ("disc_micro_batch", -1),
                                         ("rollout_batch_size", 0), ("rollout_engine", "sglang"),
                                         ("precision", "fp16"), ("actor_max_tokens_per_micro_batch", 0),
                                         ("log_prob_max_tokens_per_micro_batch", -5),
                                         ("disc_max_tokens_per_micro_batch", 0)])
def test_a_bad_knob_is_a_config_error_naming_it(tmp_path, field, value):
    with pytest.raises(ConfigError, match=rf"stages\.align\.{field}"):
        build_plan(load_grid(_grid(tmp_path, f"    {field}: {value}\n")))


def test_the_added_fields_at_their_defaults_leave_the_dumped_config_and_so_the_run_key_unchanged():
    align, warmup = AlignConfig().model_dump(mode="json"), DiscWarmupConfig().model_dump(mode="json")
    assert not set(AlignConfig.added_fields) & set(align) and "precision" not in warmup
    assert AlignConfig.model_validate(align) == AlignConfig()  # validation fills them back in
    assert AlignConfig(precision="auto").model_dump(mode="json")["precision"] == "auto"


def test_the_token_budgets_reach_the_actor_config():
    actor = AlignConfig(actor_max_tokens_per_micro_batch=64).actor()
    assert (actor.max_tokens_per_micro_batch, actor.log_prob_token_budget) == (64, 64)
    actor = AlignConfig(actor_max_tokens_per_micro_batch=64, log_prob_max_tokens_per_micro_batch=96).actor()
    assert (actor.max_tokens_per_micro_batch, actor.log_prob_token_budget) == (64, 96)
