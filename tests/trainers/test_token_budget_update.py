"""The shared PPO update (trainers/actor.py) with micro-batches cut by a token budget gives the gradient of one
micro-batch holding every row, for each registered loss aggregation (real tiny-xs Qwen3-VL, random init)."""

from __future__ import annotations

import pytest
import torch

from prism_lab.algos.aggregation import AGGREGATIONS
from prism_lab.config.algorithms import ActorConfig
from prism_lab.trainers.actor import micro_batches, ppo_update, recompute_logprobs

# 4 prompts of 3, 2, 3, 1 real tokens (left-padded) and responses of 5, 1, 3, 2 tokens: 8, 3, 6, 3 tokens per row.
PROMPTS = {"input_ids": torch.tensor([[5, 6, 7], [0, 8, 9], [10, 11, 12], [0, 0, 13]]),
           "attention_mask": torch.tensor([[1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])}
COMPLETIONS = [[3, 4, 14, 15, 16], [11], [17, 18, 19], [20, 21]]
ROWS = [0, 1, 2, 3]
BUDGET = 9  # groups [0], [1, 2], [3]: three micro-batches of response widths 5, 3 and 2


@pytest.fixture(scope="module")
def tokenizer():
    from prism_lab.models.tokenizer import build_tokenizer

    return build_tokenizer([f"count {i} red circles and {i + 1} blue squares" for i in range(50)], vocab_size=300)


def _model(tokenizer) -> torch.nn.Module:
    from prism_lab.models.loader import build_tiny_policy

    return build_tiny_policy("tiny-xs", tokenizer, seed=0)[0].float()


def _mini(max_tokens: int | None):
    return [micro_batches(PROMPTS, ROWS, COMPLETIONS, ROWS, size=len(ROWS), pad_token_id=0, image_chunks=None,
                          device="cpu", max_tokens=max_tokens)]


def test_the_budget_cuts_the_rows_as_hand_computed():
    assert [rows for rows, _ in _mini(BUDGET)[0]] == [[0], [1, 2], [3]]
    assert [rows for rows, _ in _mini(None)[0]] == [ROWS]


@pytest.mark.parametrize("agg", AGGREGATIONS.names())
def test_a_token_budget_gives_the_gradient_of_one_micro_batch(agg, tokenizer):
    actor = ActorConfig(loss_agg_mode=agg, grad_clip=1e6, entropy_coeff=0.01)
    start = _model(tokenizer)
    cur = recompute_logprobs(start, _mini(None)[0], [len(c) for c in COMPLETIONS], temperature=1.0,
                             suppress_token_ids=())
    old = {i: lp - 0.1 * (i + 1) for i, lp in cur.items()}  # ratios != 1: the clips can bite
    adv = [1.0, -0.5, 0.25, -1.0]
    deltas = []
    for max_tokens in (None, BUDGET):
        model = _model(tokenizer)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the parameter change is minus the gradient
        ppo_update(model, opt, _mini(max_tokens), old, adv, actor, temperature=1.0, suppress_token_ids=())
        deltas.append([(p - p0).detach() for p, p0 in zip(model.parameters(), start.parameters())])
    moved = max(float(d.abs().max()) for d in deltas[0])
    assert moved > 1e-4
    for whole, cut in zip(*deltas):
        torch.testing.assert_close(cut, whole, atol=1e-6, rtol=0)
