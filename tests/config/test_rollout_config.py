"""RL and alignment roll out with one RolloutConfig built from their own fields (issue 30 item 2), and building it
changed no grid field: the default configs dump, and so key, exactly as before."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from prism_lab.config.align import AlignConfig
from prism_lab.config.rl import RLConfig
from prism_lab.config.rollout import RolloutConfig
from prism_lab.rollout.sample import sample_rollouts
from prism_lab.seeds import derive_seed

#: sha256 (first 16 hex) of the sorted JSON dump of each default config, taken before RolloutConfig existed.
DEFAULT_DUMPS = {RLConfig: "992cf7f04c16e353", AlignConfig: "601df07e80733958"}


def test_rl_builds_its_rollout_from_its_own_fields():
    cfg = RLConfig(n=3, temperature=0.7, top_p=0.9, max_prompt_length=64, max_new_tokens=40, rollout_engine="hf",
                   seed=5)
    assert cfg.rollout() == RolloutConfig(n=3, temperature=0.7, top_p=0.9, max_prompt_length=64, max_new_tokens=40,
                                          engine="hf", batch_size=None, seed=5)
    assert cfg.rollout().batch_for(4) == 12  # every rollout of a call in one generate batch


def test_alignment_builds_the_same_kind_with_its_generate_batch():
    cfg = AlignConfig(n=4, temperature=0.8, top_p=0.95, max_prompt_length=128, max_new_tokens=32,
                      rollout_batch_size=2, seed=9)
    r = cfg.rollout()
    assert (r.n, r.temperature, r.top_p, r.max_prompt_length, r.max_new_tokens, r.engine, r.seed) == \
        (4, 0.8, 0.95, 128, 32, "hf", 9)
    assert r.batch_for(1) == 4  # at least n: a prompt's group is never split
    assert AlignConfig(n=2, rollout_batch_size=16).rollout().batch_for(1) == 16
    assert r.seed_for("align/rollout", 3) == derive_seed(9, "align/rollout", 3)


@pytest.mark.parametrize("config", [RLConfig, AlignConfig])
def test_the_default_dump_and_so_every_run_key_is_unchanged(config):
    from prism_lab.config.resources import UNKEYED_HINTS

    data = config().model_dump(mode="json")
    for hint in UNKEYED_HINTS:  # planner hints that never reach a key (harness/plan.py)
        data["resources"].pop(hint)
    dump = json.dumps(data, sort_keys=True)
    assert "rollout" not in config().model_dump()
    assert hashlib.sha256(dump.encode()).hexdigest()[:16] == DEFAULT_DUMPS[config]


def test_the_rollout_config_is_frozen_and_strict():
    r = RLConfig().rollout()
    with pytest.raises(ValidationError):
        r.n = 2
    with pytest.raises(ValidationError):
        RolloutConfig(**{**r.model_dump(), "engine": "sglang"})


class _Recorder:
    """An engine that records what it was asked for (the contract of prism_lab.rollout.types)."""

    def generate(self, prompts, **kw):
        self.kw = kw
        return []


def test_the_rollout_code_takes_the_settings_whole():
    eng = _Recorder()
    sample_rollouts(eng, ["p1", "p2"], AlignConfig(n=4, temperature=0.5, top_p=0.8, max_new_tokens=7).rollout(), seed=1)
    assert eng.kw == dict(n=4, max_new_tokens=7, temperature=0.5, top_p=0.8, do_sample=True, seed=1,
                          return_logprobs=True, batch_size=64)


def test_an_overlong_buffer_longer_than_the_responses_is_refused_when_the_config_is_read():
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="overlong_buffer.len=4096 exceeds max_new_tokens=64"):
        RLConfig(algorithm="dapo", max_new_tokens=64)
    assert RLConfig(algorithm="dapo", max_new_tokens=64, algorithm_overrides={"overlong_buffer": {"len": 32}})
    assert RLConfig(algorithm="grpo", max_new_tokens=64)  # no buffer
