"""Unit tests for prism_lab.algos (RL objectives) and prism_lab.config.algorithms.

Expected numbers are written out by hand (plain Python math), never produced by the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from prism_lab.algos.advantages import (
    ADV_ESTIMATORS,
    broadcast_to_tokens,
    compute_advantage,
    dr_grpo_advantage,
    grpo_advantage,
)
from prism_lab.algos.aggregation import aggregate, masked_mean
from prism_lab.algos.dapo import (
    GenBatch,
    accumulate_until,
    filter_groups,
    group_population_std,
    overlong_penalty,
    zero_variance_groups,
)
from prism_lab.algos.entropy import entropy_from_logits
from prism_lab.algos.kl import KL_ESTIMATORS, kl_penalty
from prism_lab.algos.policy_loss import (
    POLICY_LOSSES,
    compute_policy_loss,
    gspo_sequence_loss,
    gspo_sequence_ratio,
)
from prism_lab.config.algorithms import (
    ALGORITHM_PRESETS,
    AlgorithmConfig,
    resolve_algorithm,
)
from prism_lab.errors import ConfigError, PrismError

D = torch.float64
EPS = 1e-6


def close(actual: torch.Tensor, expected: list[float] | float, tol: float = 1e-9) -> None:
    exp = torch.as_tensor(expected, dtype=actual.dtype)
    assert torch.allclose(actual.detach(), exp, atol=tol, rtol=0), f"{actual} != {exp}"


# --------------------------------------------------------------------------------------- advantages


def test_grpo_advantage_unbiased_std_single_group() -> None:
    r = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=D)
    # mean 0.5, unbiased var = 4 * 0.25 / 3 = 1/3
    std = math.sqrt(1 / 3)
    a = 0.5 / (std + EPS)
    close(grpo_advantage(r, ["p"] * 4), [a, -a, a, -a])


def test_grpo_advantage_shuffled_groups_and_hashable_ids() -> None:
    r = torch.tensor([1.0, 2.0, 0.0, 4.0, 2.0], dtype=D)
    ids = [7, "x", 7, "x", 7]
    # group 7: [1, 0, 2] mean 1, unbiased var (0 + 1 + 1) / 2 = 1; group x: [2, 4] mean 3, var 2
    s7, sx = 1.0, math.sqrt(2.0)
    expected = [0.0, -1 / (sx + EPS), -1 / (s7 + EPS), 1 / (sx + EPS), 1 / (s7 + EPS)]
    close(grpo_advantage(r, ids), expected)
    perm = [3, 0, 4, 2, 1]
    out = grpo_advantage(r[perm], [ids[i] for i in perm])
    close(out, [expected[i] for i in perm])


def test_grpo_advantage_eps_and_constant_group() -> None:
    r = torch.tensor([0.0, 1.0, 0.5, 0.5], dtype=D)
    out = grpo_advantage(r, ["a", "a", "b", "b"], eps=0.1)
    s = math.sqrt(0.5)  # unbiased std of [0, 1]
    close(out, [-0.5 / (s + 0.1), 0.5 / (s + 0.1), 0.0, 0.0])


def test_grpo_advantage_float32_identical_rewards_are_exactly_zero() -> None:
    out = grpo_advantage(torch.tensor([0.1, 0.1, 0.1]), ["u", "u", "u"])
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(3))


def test_grpo_advantage_size_one_group_mean0_std1() -> None:
    r = torch.tensor([0.7, 1.0, 0.0], dtype=D)
    ids = torch.tensor([5, 9, 9])
    close(grpo_advantage(r, ids), [0.7 / (1 + EPS), 0.5 / (math.sqrt(0.5) + EPS), -0.5 / (math.sqrt(0.5) + EPS)])
    close(grpo_advantage(r, ids, norm_by_std=False), [0.7, 0.5, -0.5])


def test_dr_grpo_advantage_no_std_division() -> None:
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 3.0], dtype=D)
    ids = ["a", "a", "a", "a", "solo"]
    close(dr_grpo_advantage(r, ids), [0.5, -0.5, 0.5, -0.5, 3.0])
    close(compute_advantage("dr_grpo", r, ids, norm_by_std=True), [0.5, -0.5, 0.5, -0.5, 3.0])
    with pytest.raises(ValueError):
        dr_grpo_advantage(r, ids, norm_by_std=True)
    assert set(ADV_ESTIMATORS.names()) == {"grpo", "dr_grpo"}


def test_broadcast_to_tokens() -> None:
    out = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [0, 1, 1]]))
    close(out, [[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]])


# ------------------------------------------------------------------------------------- aggregation

M = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=D)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_token_mean() -> None:
    close(aggregate(M, MASK, "token-mean"), 7 / 3)
    close(aggregate(M, MASK, "token-mean", global_num_tokens=7), 1.0)


def test_seq_mean_token_sum_excludes_empty_rows() -> None:
    close(aggregate(M, MASK, "seq-mean-token-sum"), (3 + 4) / 2)
    close(aggregate(M, MASK, "seq-mean-token-sum", global_num_seqs=7), 1.0)


def test_seq_mean_token_mean_excludes_empty_rows() -> None:
    close(aggregate(M, MASK, "seq-mean-token-mean"), (1.5 + 4.0) / 2)


def test_seq_mean_token_sum_norm() -> None:
    close(aggregate(M, MASK, "seq-mean-token-sum-norm"), 7 / 3)  # default: padded length 3
    close(aggregate(M, MASK, "seq-mean-token-sum-norm", loss_scale_factor=14), 0.5)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregations_never_nan(mode: str) -> None:
    m = M.clone()
    m[2, 0] = float("nan")  # under the mask: must not leak
    m.requires_grad_(True)
    out = aggregate(m, MASK, mode)
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(m.grad).all() and (m.grad[2] == 0).all()
    empty = aggregate(M, torch.zeros_like(MASK), mode)
    assert float(empty) == 0.0


def test_masked_mean() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mk = torch.tensor([[1, 0], [1, 1]])
    close(masked_mean(x, mk), 8 / 3, 1e-6)
    close(masked_mean(x, mk, dim=-1), [1.0, 3.5], 1e-6)
    assert float(masked_mean(x, torch.zeros_like(mk))) == 0.0


# ------------------------------------------------------------------------------------ policy loss


def _vanilla_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    ratios = [1.5, 0.5, 1.1, 0.7, 5.0, 1.0, 100.0]
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -4.0, -1.5, -2.5]], dtype=D)
    logp = (old + torch.tensor([[math.log(r) for r in ratios]], dtype=D)).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 1.0, 2.0, -1.0, 0.5, 1.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    return logp, old, adv, mask


def test_vanilla_asymmetric_and_dual_clip() -> None:
    logp, old, adv, mask = _vanilla_case()
    out = compute_policy_loss("vanilla", logp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28,
                              clip_ratio_c=3.0)
    # per token: t0 -1.28 (clip high), t1 0.8 (clip low), t2 -1.1, t3 -1.4 (A>0, r<1: unclipped),
    # t4 min(5, 3) = 3 (dual clip), t5 -0.5; t6 masked
    expected_tokens = [-1.28, 0.8, -1.1, -1.4, 3.0, -0.5]
    close(out.loss_mat[0, :6], expected_tokens)
    close(out.loss, sum(expected_tokens) / 6)
    close(out.clipfrac_high, 1 / 6)
    close(out.clipfrac_low, 1 / 6)
    close(out.clipfrac, 2 / 6)
    close(out.clipfrac_dual, 1 / 6)
    close(out.approx_kl, -sum(math.log(r) for r in [1.5, 0.5, 1.1, 0.7, 5.0, 1.0]) / 6)
    out.loss.backward()
    # d/dlogp of -A r is -A r; clipped / dual-clipped / masked tokens get 0
    close(logp.grad, [[0.0, 0.0, -1.1 / 6, -2 * 0.7 / 6, 0.0, -0.5 / 6, 0.0]])


def test_vanilla_symmetric_clip_value() -> None:
    logp, old, adv, mask = _vanilla_case()
    out = compute_policy_loss("vanilla", logp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.2,
                              clip_ratio_c=3.0)
    close(out.loss_mat[0, 0], -1.2)
    m = out.metrics()
    assert set(m) == {
        "actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_low",
        "actor/pg_clipfrac_high", "actor/pg_clipfrac_dual", "actor/ppo_kl",
    }


def test_vanilla_log_ratio_clamped_at_20_and_c_must_exceed_1() -> None:
    old = torch.zeros(1, 1, dtype=D)
    logp = torch.full((1, 1), 30.0, dtype=D)
    out = compute_policy_loss("vanilla", logp, old, torch.tensor([-1.0], dtype=D), torch.ones(1, 1), clip_ratio_c=1e12)
    close(out.loss, math.exp(20.0), 1e-3)
    close(out.approx_kl, -20.0)
    with pytest.raises(ValueError):
        compute_policy_loss("vanilla", logp, old, torch.tensor([1.0], dtype=D), torch.ones(1, 1), clip_ratio_c=1.0)


def test_gspo_sequence_ratio() -> None:
    old = torch.zeros(4, 3, dtype=D)
    logp = torch.tensor([[0.1, 0.3, -0.1], [0.2, 9.0, 9.0], [5.0, 5.0, 5.0], [12.0, 12.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
    close(gspo_sequence_ratio(logp, old, mask), [math.exp(0.1), math.exp(0.2), 1.0, math.exp(10.0)])


def test_gspo_loss_value_and_clipfrac() -> None:
    old = torch.zeros(2, 3, dtype=D)
    logp = torch.tensor([[0.1, 0.3, -0.1], [0.2, 9.0, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = torch.tensor([1.0, -1.0], dtype=D)
    # row 0: s = e^0.1 > 1 + 4e-4, A > 0 -> clipped to -(1 + 4e-4); row 1: s = e^0.2, A < 0 -> e^0.2
    expected = (-(1 + 4e-4) + math.exp(0.2)) / 2
    out = compute_policy_loss("gspo", logp, old, adv, mask, clip_ratio_low=3e-4, clip_ratio_high=4e-4,
                              loss_agg_mode="token-mean")
    assert out.agg_mode == "seq-mean-token-mean"  # forced
    close(out.loss, expected)
    close(out.clipfrac_high, 3 / 4)
    close(out.clipfrac_low, 0.0)
    close(out.clipfrac_dual, 0.0)
    close(gspo_sequence_loss(logp, old, adv, mask, clip_low=3e-4, clip_high=4e-4), expected)


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_gspo_token_equals_gspo_sequence_value_and_gradient(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 8, generator=g, dtype=D) * 3
    delta = torch.randn(6, 8, generator=g, dtype=D) * 0.3
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6, [0] * 8, [1] * 7 + [0], [1] * 3 + [0] * 5])
    seq_adv = torch.tensor([1.0, -0.5, 2.0, 0.3, -1.5, 0.7], dtype=D)
    lp_a = (old + delta).requires_grad_(True)
    lp_b = (old + delta).requires_grad_(True)
    tok = compute_policy_loss(
        name, lp_a, old, broadcast_to_tokens(seq_adv, mask), mask,
        clip_ratio_low=0.05, clip_ratio_high=0.08, loss_agg_mode="seq-mean-token-mean",
    )
    ref = gspo_sequence_loss(lp_b, old, seq_adv, mask, clip_low=0.05, clip_high=0.08)
    s = gspo_sequence_ratio(old + delta, old, mask)
    assert ((s > 1.08) | (s < 0.95)).any() and ((s < 1.08) & (s > 0.95)).any()  # both branches exercised
    assert torch.allclose(tok.loss, ref, atol=1e-12)
    tok.loss.backward()
    ref.backward()
    assert torch.allclose(lp_a.grad, lp_b.grad, atol=1e-12)
    assert lp_a.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("mode", "kw"),
    [("token-mean", "global_num_tokens"), ("seq-mean-token-mean", "global_num_seqs"),
     ("seq-mean-token-sum", "global_num_seqs"), ("seq-mean-token-sum-norm", None)],
)
def test_micro_batch_split_invariance(mode: str, kw: str | None) -> None:
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(5, 6, generator=g, dtype=D)
    delta = torch.randn(5, 6, generator=g, dtype=D) * 0.2
    adv = torch.randn(5, generator=g, dtype=D)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [0] * 6, [1] * 5 + [0], [1] * 3 + [0] * 3])
    totals = {"global_num_tokens": int(mask.sum()), "global_num_seqs": 4}
    extra = {kw: totals[kw]} if kw else {"loss_scale_factor": 6.0}
    full_lp = (old + delta).requires_grad_(True)
    full = compute_policy_loss("vanilla", full_lp, old, adv, mask, loss_agg_mode=mode, **extra)
    full.loss.backward()
    micro_lp = (old + delta).requires_grad_(True)
    total = torch.zeros((), dtype=D)
    for sl in (slice(0, 1), slice(1, 3), slice(3, 5)):
        part = compute_policy_loss("vanilla", micro_lp[sl], old[sl], adv[sl], mask[sl], loss_agg_mode=mode,
                                   **extra)
        part.loss.backward()
        total = total + part.loss.detach()
    assert torch.allclose(total, full.loss.detach(), atol=1e-12)
    assert torch.allclose(micro_lp.grad, full_lp.grad, atol=1e-12)


@pytest.mark.parametrize("name", ["vanilla", "gspo", "gspo_token"])
def test_clip_is_noop_on_policy(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    old = -torch.rand(3, 4, generator=g, dtype=D) * 2
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    adv = torch.tensor([5.0, -7.0, 0.3], dtype=D)
    logp = old.clone().requires_grad_(True)  # first mini-batch: logp == old_logp
    agg = "seq-mean-token-mean" if name != "vanilla" else "token-mean"
    out = compute_policy_loss(name, logp, old, adv, mask, clip_ratio_low=1e-4, clip_ratio_high=1e-4, clip_ratio_c=1.01,
                              loss_agg_mode=agg)
    out.loss.backward()
    assert float(out.clipfrac) == 0.0 and float(out.clipfrac_dual) == 0.0
    # unclipped policy gradient: d/dlogp of -A * logp, aggregated
    if name == "vanilla":  # token-mean over 7 tokens
        expected = [[-5 / 7] * 4, [7 / 7, 7 / 7, 0, 0], [-0.3 / 7, 0, 0, 0]]
        close(out.loss, (-5 * 4 + 7 * 2 - 0.3) / 7)
    else:  # seq-mean-token-mean over 3 sequences
        expected = [[-5 / 12] * 4, [7 / 6, 7 / 6, 0, 0], [-0.3 / 3, 0, 0, 0]]
        close(out.loss, (-5 + 7 - 0.3) / 3)
    close(logp.grad, expected)


def test_policy_loss_registry() -> None:
    assert set(POLICY_LOSSES.names()) == {"vanilla", "gspo", "gspo_token"}


# --------------------------------------------------------------------------------------------- KL


def test_kl_estimators_values() -> None:
    logp = torch.tensor([[-1.0, -2.0]], dtype=D)
    ref = torch.tensor([[-1.5, -1.0]], dtype=D)  # d = logp - ref = [0.5, -1.0]; u = ref - logp = [-0.5, 1.0]
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    expected = {
        "k1": [0.5, -1.0], "kl": [0.5, -1.0], "abs": [0.5, 1.0], "k2": [0.125, 0.5], "mse": [0.125, 0.5],
        "k3": k3, "low_var_kl": k3, "k3+": k3, "low_var_kl+": k3,
    }
    assert set(KL_ESTIMATORS.names()) == set(expected)
    for kind, vals in expected.items():
        close(kl_penalty(logp, ref, kind)[0], vals)


def test_kl_k3_clamps() -> None:
    logp = torch.tensor([[0.0, -30.0]], dtype=D)
    ref = torch.tensor([[-30.0, 0.0]], dtype=D)
    # u = -30 -> -20: e^-20 + 20 - 1 ~ 19 -> 10; u = 30 -> 20: e^20 - 21 -> 10
    close(kl_penalty(logp, ref, "k3"), [[10.0, 10.0]])


@pytest.mark.parametrize("kind", ["k3+", "low_var_kl+"])
def test_kl_straight_through_gradient_is_k2(kind: str) -> None:
    logp = torch.tensor([[-1.0, -2.0]], dtype=D, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]], dtype=D)
    kl_penalty(logp, ref, kind).sum().backward()
    close(logp.grad, [[0.5, -1.0]])  # d/dlogp 0.5 (logp - ref)^2
    lp3 = logp.detach().clone().requires_grad_(True)
    kl_penalty(lp3, ref, "k3").sum().backward()
    close(lp3.grad, [[1 - math.exp(-0.5), 1 - math.exp(1.0)]])  # k3's own gradient differs


# ------------------------------------------------------------------------------------------- DAPO


def test_overlong_penalty() -> None:
    close(overlong_penalty([1000, 4096, 4097, 6144, 8192], max_len=8192, buffer_len=4096),
          [0.0, 0.0, -1 / 4096, -0.5, -1.0], 1e-7)
    close(overlong_penalty(torch.tensor([6144, 8192]), max_len=8192, buffer_len=4096, factor=0.5), [-0.25, -0.5], 1e-7)
    with pytest.raises(ValueError):
        overlong_penalty([1], max_len=10, buffer_len=20)


def test_zero_variance_filter_population_std() -> None:
    vals = [1, 1, 0, 1, 0, 0, 1]
    ids = ["a", "a", "b", "b", "c", "c", "d"]
    assert zero_variance_groups(vals, ids) == {"a", "c"}
    assert filter_groups(torch.tensor(vals, dtype=torch.float32), ids).tolist() == [
        False, False, True, True, False, False, True,
    ]
    std = group_population_std(vals, ids)
    assert std["b"] == pytest.approx(0.5)  # ddof=0; the unbiased std would be sqrt(0.5)
    assert std["a"] == 0.0 and std["d"] == 0.0
    assert zero_variance_groups(torch.tensor([0.1, 0.1, 0.1]), [3, 3, 3]) == {3}


def _batch(groups: list[list[float]], tag: str) -> GenBatch[str]:
    vals = [v for grp in groups for v in grp]
    ids = [f"{tag}{gi}" for gi, grp in enumerate(groups) for _ in grp]
    return GenBatch(payload=tag, values=vals, group_ids=ids)


def test_dynamic_sampling_accumulates_and_truncates() -> None:
    plan = [
        _batch([[1, 1], [0, 1]], "b0"),  # keeps group 1 (samples 2, 3)
        _batch([[0, 0], [0, 0]], "b1"),  # keeps nothing
        _batch([[1, 0], [1], [0, 1]], "b2"),  # keeps all three; only the first two are needed
    ]
    calls: list[int] = []

    def produce(k: int) -> GenBatch[str]:
        calls.append(k)
        return plan[k]

    res = accumulate_until(produce, target_groups=3, max_num_gen_batches=10)
    assert calls == [0, 1, 2]
    assert res.selected == [[2, 3], [], [0, 1, 2]]
    assert res.num_gen_batches == 3 and res.num_groups_kept == 3
    assert res.num_groups_seen == 7 and res.num_groups_filtered == 3
    assert res.filtered_share == pytest.approx(3 / 7)
    assert res.num_groups_discarded_by_truncation == 1
    assert res.metrics()["dapo/filtered_share"] == pytest.approx(3 / 7)


def test_dynamic_sampling_raises_after_max_batches() -> None:
    calls: list[int] = []

    def produce(k: int) -> GenBatch[str]:
        calls.append(k)
        return _batch([[1, 1], [0, 0]], f"b{k}")

    with pytest.raises(PrismError, match="max_num_gen_batches"):
        accumulate_until(produce, target_groups=1, max_num_gen_batches=3)
    assert calls == [0, 1, 2]


def test_dynamic_sampling_unlimited_and_disabled() -> None:
    def produce(k: int) -> GenBatch[str]:
        return _batch([[1, 1]] if k < 12 else [[0, 1]], f"b{k}")

    res = accumulate_until(produce, target_groups=1, max_num_gen_batches=0)
    assert res.num_gen_batches == 13 and res.selected[-1] == [0, 1]
    off = accumulate_until(produce, target_groups=1, enabled=False)
    assert off.num_gen_batches == 1 and off.selected == [[0, 1]] and off.num_groups_filtered == 0


# ---------------------------------------------------------------------------------------- entropy


def test_entropy_from_logits() -> None:
    h34 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [1000.0, 1000.0 + math.log(3.0)]]], dtype=D)
    out = entropy_from_logits(logits)
    close(out, [[math.log(2.0), h34, h34]], 1e-9)
    big = torch.randn(2, 7, 11, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(entropy_from_logits(big, chunk_size=3), entropy_from_logits(big), atol=1e-6)


# ---------------------------------------------------------------------------------- config/presets


def test_every_field_documented() -> None:
    from prism_lab.config.algorithms import FilterGroupsConfig, OverlongBufferConfig

    for model in (AlgorithmConfig, OverlongBufferConfig, FilterGroupsConfig):
        for fname, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{fname} has no description"


def test_presets_match_paper_table() -> None:
    assert {"grpo", "dapo", "gspo", "gspo_token", "dr_grpo"} <= set(ALGORITHM_PRESETS.names())
    for name in ALGORITHM_PRESETS.names():
        c = ALGORITHM_PRESETS.get(name).config
        assert ALGORITHM_PRESETS.get(name).description
        assert c.adv_estimator in ("grpo", "dr_grpo")
        assert (c.kl_loss_coef, c.lr, c.grad_clip, c.ppo_epochs, c.entropy_coeff) == (0.0, 1e-6, 1.0, 1, 0.0)

    g = resolve_algorithm("grpo")
    assert (g.policy_loss, g.clip_ratio_low, g.clip_ratio_high, g.clip_ratio_c) == ("vanilla", 0.2, 0.2, 3.0)
    assert (g.loss_agg_mode, g.weight_decay, g.num_warmup_steps(1500)) == ("token-mean", 0.01, 0)
    assert g.norm_adv_by_std and g.adv_eps == 1e-6
    assert not g.overlong_buffer.enabled and not g.filter_groups.enabled
    assert g.mini_batches_per_rollout == 1 and g.is_on_policy

    d = resolve_algorithm("dapo")
    assert (d.policy_loss, d.clip_ratio_low, d.clip_ratio_high, d.clip_ratio_c) == ("vanilla", 0.2, 0.28, 10.0)
    assert (d.loss_agg_mode, d.weight_decay, d.num_warmup_steps(1500)) == ("token-mean", 0.1, 10)
    ob, fg = d.overlong_buffer, d.filter_groups
    assert (ob.enabled, ob.len, ob.penalty_factor, ob.resolve_len(8192)) == (True, 4096, 1.0, 4096)
    assert (fg.enabled, fg.metric, fg.max_num_gen_batches, fg.gen_batch_multiplier * 32) == (True, "acc", 10, 96)
    assert d.mini_batches_per_rollout == 1

    s = resolve_algorithm("gspo")
    assert (s.policy_loss, s.clip_ratio_low, s.clip_ratio_high) == ("gspo", 3e-4, 4e-4)
    assert (s.loss_agg_mode, s.weight_decay, s.num_warmup_steps(1500)) == ("seq-mean-token-mean", 0.1, 75)
    assert not s.overlong_buffer.enabled and not s.filter_groups.enabled and s.mini_batches_per_rollout == 1
    assert resolve_algorithm("gspo_token").policy_loss == "gspo_token"
    assert resolve_algorithm("gspo_paper").mini_batches_per_rollout == 4

    dr = resolve_algorithm("dr_grpo")
    assert (dr.adv_estimator, dr.norm_adv_by_std, dr.loss_agg_mode) == ("dr_grpo", False, "seq-mean-token-sum-norm")


def test_resolve_algorithm_overrides_and_errors() -> None:
    c = resolve_algorithm("dapo", {"overlong_buffer.len_ratio": 0.5, "filter_groups": {"max_num_gen_batches": 0}})
    assert c.overlong_buffer.resolve_len(64) == 32 and c.overlong_buffer.len == 4096
    assert c.filter_groups.max_num_gen_batches == 0 and c.filter_groups.metric == "acc"
    assert resolve_algorithm("grpo", {"mini_batches_per_rollout": 4}).is_on_policy is False
    with pytest.raises(ConfigError, match="len_ratio"):
        resolve_algorithm("dapo").overlong_buffer.resolve_len(64)
    with pytest.raises(ConfigError, match="unknown algorithm"):
        resolve_algorithm("ppo")
    with pytest.raises(ConfigError, match="clip_ratio_lo"):
        resolve_algorithm("grpo", {"clip_ratio_lo": 0.1})
    with pytest.raises(ConfigError, match="seq-mean-token-mean"):
        resolve_algorithm("gspo", {"loss_agg_mode": "token-mean"})
    with pytest.raises(ConfigError, match="norm_adv_by_std"):
        resolve_algorithm("dr_grpo", {"norm_adv_by_std": True})
    with pytest.raises(ConfigError, match="clip_ratio_c"):
        resolve_algorithm("grpo", {"clip_ratio_c": 1.0})
    assert resolve_algorithm("gspo_token", {"loss_agg_mode": "token-mean"}).loss_agg_mode == "token-mean"
