"""The shared PPO actor update (trainers/actor.py) on the real tiny-xs Qwen3-VL policy (random init, text-only rows).

* micro-batch invariance: one micro-batch of 2 rows or two of 1 row give the same loss and the same update;
* a hand-computed loss on a 2-row batch with known ratios (one clipped above, one clipped below).
"""

from __future__ import annotations

import math

import pytest
import torch

from prism_lab.config.algorithms import ActorConfig
from prism_lab.trainers.actor import micro_batches, ppo_update, recompute_logprobs

PROMPTS = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 10]]), "attention_mask": torch.ones(2, 3, dtype=torch.long)}
COMPLETIONS = [[3, 4], [11]]  # 2 + 1 response tokens


@pytest.fixture(scope="module")
def tokenizer():
    from prism_lab.models.tokenizer import build_tokenizer

    return build_tokenizer([f"count {i} red circles and {i + 1} blue squares" for i in range(50)], vocab_size=300)


def _model(tokenizer) -> torch.nn.Module:
    from prism_lab.models.loader import build_tiny_policy

    return build_tiny_policy("tiny-xs", tokenizer, seed=0)[0].float()


def _mini(size: int):
    return [micro_batches(PROMPTS, [0, 1], COMPLETIONS, [0, 1], size=size, pad_token_id=0, image_chunks=None,
                          device="cpu")]


def _current_logprobs(model) -> dict[int, torch.Tensor]:
    return recompute_logprobs(model, _mini(2)[0], [len(c) for c in COMPLETIONS], temperature=1.0, suppress_token_ids=())


def _update(model, size: int, old, advantages, actor: ActorConfig) -> dict[str, float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return ppo_update(model, opt, _mini(size), old, advantages, actor, temperature=1.0, suppress_token_ids=())


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_one_or_two_micro_batches_give_the_same_loss_and_update(agg, tokenizer):
    settings = ActorConfig(loss_agg_mode=agg, grad_clip=1e6)
    before = _model(tokenizer)
    old = {i: lp - 0.1 * (i + 1) for i, lp in _current_logprobs(before).items()}  # ratios != 1: the clip can bite
    adv = [1.0, -0.5]
    one, two = _model(tokenizer), _model(tokenizer)
    r1 = _update(one, 2, old, adv, settings)
    r2 = _update(two, 1, old, adv, settings)
    assert r1["actor/pg_loss"] == pytest.approx(r2["actor/pg_loss"], abs=1e-6)
    assert r1["actor/grad_norm"] == pytest.approx(r2["actor/grad_norm"], rel=1e-5)
    moved = 0.0
    for (name, p1), p2, p0 in zip(one.named_parameters(), two.parameters(), before.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-7, rtol=1e-5, msg=name)
        moved = max(moved, float((p1 - p0).detach().abs().max()))
    assert moved > 1e-4  # the update did something


def test_a_two_row_batch_gives_the_hand_computed_loss(tokenizer):
    """Row 0: A = +1, ratio 1.5 -> clipped at 1 + 0.2: loss -1.2 on each of its 2 tokens. Row 1: A = -0.5,
    ratio 0.5 -> clipped at 1 - 0.2: loss 0.5 * 0.8 = 0.4 on its token (dual clip -A*c = 1.5 does not bind).
    token-mean over the 3 tokens: (2 * -1.2 + 0.4) / 3 = -2/3. Both clip fractions: the share of tokens."""
    model = _model(tokenizer)
    cur = _current_logprobs(model)
    old = {0: cur[0] - math.log(1.5), 1: cur[1] + math.log(2.0)}
    res = _update(model, 1, old, [1.0, -0.5], ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0))
    assert res["actor/pg_loss"] == pytest.approx(-2.0 / 3.0, abs=1e-5)
    assert res["actor/pg_clipfrac_high"] == pytest.approx(2 / 3, abs=1e-6)
    assert res["actor/pg_clipfrac_low"] == pytest.approx(1 / 3, abs=1e-6)
    assert res["actor/num_updates"] == 1.0 and res["actor/skipped_updates"] == 0.0
