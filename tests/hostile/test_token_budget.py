"""Issue 30 item 2: the micro-batch token budgets are checked when the grid is read (exit 2, one line naming
the field and what it expects), for RL (an algorithm override) and alignment (a stage field)."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import assert_user_error, snapshot

CASES = {
    "rl-budget-zero": ({"stages": {"rl": {"algorithm_overrides": {"max_tokens_per_micro_batch": 0}}}},
                       ("stages.rl.algorithm_overrides", "max_tokens_per_micro_batch", "greater than or equal to 1")),
    "rl-logprob-budget-text": (
        {"stages": {"rl": {"algorithm_overrides": {"log_prob_max_tokens_per_micro_batch": "lots"}}}},
        ("stages.rl.algorithm_overrides", "log_prob_max_tokens_per_micro_batch", "integer")),
    "align-budget-negative": ({"stages": {"align": {"actor_max_tokens_per_micro_batch": -1}}},
                              ("stages.align.actor_max_tokens_per_micro_batch", "greater than or equal to 1")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_bad_token_budget_is_refused_by_plan(ws, name):
    fields, needles = CASES[name]
    assert_user_error(ws.plan(ws.grid(**fields)), "probe.yaml", *needles)
    assert snapshot(ws.root) is None
