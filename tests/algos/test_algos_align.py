"""Stage-2 algorithm pieces: boundary split, discriminator losses, multi-reward advantages, align config."""

from __future__ import annotations

import math
import random

import pytest
import torch

from prism_lab.algos.boundary import (
    caption_boundary_for_ids,
    find_caption_boundary,
    split_lengths,
    token_char_offsets,
)
from prism_lab.algos.disc_loss import (
    D_ACC_NO_VALID_PLACEHOLDER,
    LengthCorrection,
    bradley_terry_loss,
    gad_whole_response_loss,
    mm_gad_discriminator_loss,
    router_load_balancing_loss,
    warmup_pairwise_loss,
)
from prism_lab.algos.multi_reward import (
    ADVANTAGE_MODES,
    MultiRewardConfig,
    broadcast_to_tokens,
    gad_reward,
    gad_whole_response_advantage,
    group_index,
    group_normalize,
    grpo_multi_reward,
    place_invalid_scores,
    select_mode,
)
from prism_lab.config.align import AlignConfig, DiscriminatorConfig, DiscWarmupConfig
from prism_lab.prompts import SPLIT_RE

SP1 = 0.31326168751822286  # softplus(-1) = ln(1 + e^-1)
SP2 = 0.12692801104297263  # softplus(-2)
SP15 = 0.20141327798275246  # softplus(-1.5)
LN2 = 0.6931471805599453


def approx(values, rel=1e-5, abs=1e-6):
    return pytest.approx(values, rel=rel, abs=abs)


# ------------------------------------------------------------------------------------------------- boundary


def _offsets_from_pieces(pieces):
    out, pos = [], 0
    for p in pieces:
        out.append((pos, pos + len(p)))
        pos += len(p)
    return "".join(pieces), out


def test_find_caption_boundary_hand_example():
    pieces = ["<caption>", "ab", "</cap", "tion><think>", "x", "</think><answer>1</answer>"]
    text, offs = _offsets_from_pieces(pieces)
    assert find_caption_boundary(text, offs) == 4
    # leading whitespace and a token ending exactly at "</caption>"
    pieces = [" \n", "<caption>", "a", "</caption>", "\n<think>x</think>\n<answer>1</answer>", "\n"]
    text, offs = _offsets_from_pieces(pieces)
    assert find_caption_boundary(text, offs) == 4
    # not format-valid -> None
    text, offs = _offsets_from_pieces(["<caption>", "a", "</caption>", "<think>x</think>"])
    assert find_caption_boundary(text, offs) is None
    # a "</caption>" inside the think block does not move the boundary (lazy group 1)
    pieces = ["<caption>a</caption>", "<think>", "</caption>", "</think><answer>1</answer>"]
    text, offs = _offsets_from_pieces(pieces)
    assert find_caption_boundary(text, offs) == 1


def test_split_lengths_cases():
    assert split_lengths(10, 4, True) == (0, 4, 4, 10)
    # invalid sample -> b = max(1, L // 2)
    assert split_lengths(9, None, False) == (0, 4, 4, 9)
    assert split_lengths(9, 7, False) == (0, 4, 4, 9)
    # empty caption segment (b = 0) -> same fallback
    assert split_lengths(6, 0, True) == (0, 3, 3, 6)
    # empty cot segment -> keep the 1 token at b
    assert split_lengths(5, 5, True) == (0, 5, 5, 6)
    assert split_lengths(1, None, False) == (0, 1, 1, 2)
    with pytest.raises(ValueError):
        split_lengths(-1, None, False)


@pytest.fixture(scope="module")
def bpe_tokenizer():
    return build_bpe_tokenizer()


def build_bpe_tokenizer():
    """A byte-level BPE (lossless for any string) trained on a tiny corpus with multi-byte characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "<caption>\n- a red circle and a blue square\n</caption>\n<think>\nthere are 3 shapes, so 3 + 2 = 5\n"
        "</think>\n<answer>\n5\n</answer>",
        "how many red circles are there ? the answer is 12 naïve café 日本語 ∑ x² ≤ 9",
    ] * 40
    tok.train_from_iterator(corpus, trainer)
    return tok


def _naive_boundary(tok, ids):
    """Reference: the original's O(L) 'decode every prefix' search (test-only)."""
    text = tok.decode(ids, skip_special_tokens=True)
    m = SPLIT_RE.match(text)
    if m is None:
        return None
    cap = m.group(1)
    for k in range(1, len(ids) + 1):
        if cap in tok.decode(ids[:k], skip_special_tokens=True):
            return k
    return None


def _naive_ends(tok, ids, text):
    ends = []
    for k in range(1, len(ids) + 1):
        pre = tok.decode(ids[:k], skip_special_tokens=True).rstrip("\ufffd")
        n = 0
        while n < min(len(pre), len(text)) and pre[n] == text[n]:
            n += 1
        ends.append(n)
    return ends


_RESPONSES = [
    "<caption>\n- a red circle\n</caption>\n<think>\nthere are 3 shapes\n</think>\n<answer>\n3\n</answer>",
    "  <caption>日本語 café</caption>\n<think>∑ x² ≤ 9</think><answer>12</answer>\n",
    "<caption>\n- naïve</caption>日<think>x</think><answer>5</answer>",  # invalid: text between blocks
    "<caption>- blue square, 日本</caption><think>2 + 3 = 5 ≤ 9</think>\n<answer>\n5\n</answer>",
    "no format at all, just 42",
    "<caption></caption><think></think><answer></answer>",
]


def _id_sequences(tok):
    rng = random.Random(0)
    eot = tok.token_to_id("<|im_end|>")
    seqs = []
    for text in _RESPONSES:
        seqs.append(tok.encode(text).ids + [eot])
        # a non-canonical tokenisation, as sampling can produce: encode random chunks separately
        cuts = sorted(rng.sample(range(1, len(text)), 4))
        parts = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        ids = [i for p in parts for i in tok.encode(p).ids]
        seqs.append(ids + [eot])
        # byte-level split of every character, so multi-byte characters span several tokens
        byte_ids = []
        for p in parts:
            for ch in p:
                byte_ids += tok.encode(ch).ids if ch.isascii() else [
                    tok.token_to_id(pre_tok) for pre_tok in _bytes_as_tokens(ch)
                ]
        seqs.append(byte_ids + [eot])
    return seqs


def _bytes_as_tokens(ch):
    from tokenizers import pre_tokenizers

    # ByteLevel maps each UTF-8 byte to one printable char; those single-char tokens are in the initial alphabet.
    mapped = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(ch)[0][0]
    return list(mapped)


def test_incremental_offsets_match_naive_prefix_decoding(bpe_tokenizer):
    tok = bpe_tokenizer
    n_valid = 0
    for ids in _id_sequences(tok):
        assert None not in ids
        text, offs = token_char_offsets(tok, ids)
        assert text == tok.decode(ids, skip_special_tokens=True)
        assert [e for _, e in offs] == _naive_ends(tok, ids, text)
        assert offs[-1][1] == len(text)
        b, text2 = caption_boundary_for_ids(tok, ids)
        assert text2 == text
        assert b == _naive_boundary(tok, ids)
        n_valid += b is not None
    assert n_valid >= 9  # the valid responses, in all three tokenisations


def test_offsets_with_transformers_fast_tokenizer(bpe_tokenizer):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    for ids in _id_sequences(bpe_tokenizer)[:6]:
        b, _ = caption_boundary_for_ids(fast, ids)
        assert b == _naive_boundary(fast, ids)


# ------------------------------------------------------------------------------------------------ disc loss


def test_bradley_terry_masked():
    loss, acc = bradley_terry_loss(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0]),
                                   torch.tensor([True, True, False]))
    assert loss.item() == approx((SP2 + LN2) / 2)
    assert acc.item() == 0.5
    loss, acc = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([False]))
    assert loss.item() == 0.0 and math.isnan(acc.item())


def _scores():
    return dict(
        s_cap=torch.tensor([1.0, 0.0], requires_grad=True),
        s_cot=torch.tensor([0.0, 3.0], requires_grad=True),
        t_cap=torch.tensor([2.0, 1.0], requires_grad=True),
        t_cot=torch.tensor([1.0, 1.0], requires_grad=True),
    )


def test_mm_gad_loss_pair_branch_and_l2_includes_invalid():
    s = _scores()
    out = mm_gad_discriminator_loss(**s, valid_mask=torch.tensor([True, False]))
    # pair: only sample 0 -> softplus(-1) for caption and cot; reg over both samples:
    # 1/4 * (mean[1,0] + mean[0,9] + mean[4,1] + mean[1,1]) = 1/4 * 8.5
    assert out.pair_loss.item() == approx(2 * SP1)
    assert out.reg.item() == approx(2.125)
    assert out.loss.item() == approx(2 * SP1 + 0.001 * 2.125)
    assert out.cap_acc.item() == 1.0 and out.cot_acc.item() == 1.0 and out.d_acc.item() == 1.0
    assert out.valid_ratio.item() == 0.5 and out.n_valid == 1 and not out.used_fallback
    assert out.student_cot_mean.item() == approx(1.5) and out.teacher_caption_mean.item() == approx(1.5)
    out.loss.backward()
    # the invalid sample gets gradient only from the L2 term: d/ds (0.001 * 1/4 * s^2 / 2) = 0.001 * s / 4
    assert s["s_cot"].grad[1].item() == approx(0.001 * 3.0 / 4)
    m = out.metrics()
    assert m["critic/d_acc"] == 1.0 and m["critic/n_nonfinite"] == 0.0


def test_mm_gad_loss_fallback_when_no_valid_sample():
    s = _scores()
    out = mm_gad_discriminator_loss(**s, valid_mask=torch.tensor([False, False]))
    fb = 0.01 * (SP15 + SP1)  # means of T_cap = 1.5, of T_cot = 1
    assert out.used_fallback and out.fallback_loss.item() == approx(fb)
    assert out.loss.item() == approx(fb + 0.001 * 2.125)
    assert out.d_acc.item() == pytest.approx(D_ACC_NO_VALID_PLACEHOLDER) == pytest.approx(0.92)
    assert math.isnan(out.d_acc_or_nan.item()) and not out.has_valid
    out.loss.backward()
    assert s["t_cap"].grad is not None and s["s_cap"].grad is not None
    # another rank has valid samples: no fallback, the local pair loss is an exact (graph-attached) 0
    s = _scores()
    out = mm_gad_discriminator_loss(**s, valid_mask=torch.tensor([False, False]), n_valid_global=3)
    assert not out.used_fallback and out.loss.item() == approx(0.001 * 2.125)


def test_mm_gad_clip_zeroes_gradient_outside_range():
    s_cap = torch.tensor([12.0, 5.0, -11.0], requires_grad=True)
    z = torch.zeros(3)
    out = mm_gad_discriminator_loss(s_cap, z, z, z, torch.ones(3, dtype=torch.bool))
    out.loss.backward()
    assert s_cap.grad[0].item() == 0.0 and s_cap.grad[2].item() == 0.0
    assert s_cap.grad[1].item() != 0.0
    assert out.student_caption_mean.item() == approx((10.0 + 5.0 - 10.0) / 3)


def test_mm_gad_nonfinite_scores_replaced_and_counted():
    v = torch.tensor([True, True])
    bad = mm_gad_discriminator_loss(torch.tensor([float("nan"), 1.0]), torch.zeros(2),
                                    torch.zeros(2), torch.tensor([float("inf"), 0.0]), v)
    good = mm_gad_discriminator_loss(torch.tensor([0.0, 1.0]), torch.zeros(2), torch.zeros(2), torch.zeros(2), v)
    assert bad.n_nonfinite == 2 and good.n_nonfinite == 0
    assert math.isfinite(bad.loss.item()) and bad.loss.item() == approx(good.loss.item())


def test_mm_gad_length_correction():
    one = torch.ones(1)
    lc = LengthCorrection(beta_caption=1.0, beta_cot=0.0, student_caption_len=torch.tensor([math.e - 1]),
                          student_cot_len=one, teacher_caption_len=torch.zeros(1), teacher_cot_len=one)
    out = mm_gad_discriminator_loss(torch.tensor([1.0]), torch.zeros(1), torch.zeros(1), torch.zeros(1),
                                    torch.tensor([True]), length_correction=lc)
    # s_cap: 1 - log(e) = 0 -> caption delta 0 -> ln 2; cot delta 0 -> ln 2
    assert out.pair_loss.item() == approx(2 * LN2)


def test_warmup_pairwise_loss():
    out = warmup_pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor(2.0), aux_coef=0.01)
    assert out.bt_loss.item() == approx((SP1 + LN2) / 2)
    assert out.loss.item() == approx((SP1 + LN2) / 2 + 0.02)
    assert out.acc.item() == 0.5
    assert warmup_pairwise_loss(torch.tensor([1.0]), torch.tensor([0.0]), None).loss.item() == approx(SP1)


def test_router_load_balancing_hand_computed():
    l3 = math.log(3.0)
    logits = [torch.tensor([[l3, 0.0], [0.0, l3]])]  # probs [.75,.25] and [.25,.75]; top-1 = e0, e1
    assert router_load_balancing_loss(logits, top_k=1, num_experts=2).item() == approx(1.0)
    # mask out token 2: f = [1, 0], P = [.75, .25] -> 2 * .75
    mask = torch.tensor([[1, 0]])
    assert router_load_balancing_loss(logits, 1, 2, attention_mask=mask).item() == approx(1.5)
    # top_k = num_experts: every expert chosen once per token -> aux = E * sum(P) = 2
    assert router_load_balancing_loss(logits * 2, 2, 2).item() == approx(2.0)


def test_router_load_balancing_matches_transformers():
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import (
        load_balancing_loss_func,
    )

    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(2 * 5, 4, generator=g) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    ours = router_load_balancing_loss(layers, top_k=2, num_experts=4, attention_mask=mask)
    ref = load_balancing_loss_func(tuple(layers), 4, 2, mask)
    assert ours.item() == approx(float(ref))
    assert router_load_balancing_loss(layers, 2, 4).item() == approx(float(load_balancing_loss_func(tuple(layers), 4, 2)))


def test_gad_whole_response_loss_and_reward():
    out = gad_whole_response_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0]))
    assert out.loss.item() == approx((SP1 + LN2) / 2) and out.acc.item() == 0.5
    r = gad_reward(torch.tensor([12.0, float("nan"), -1.0]), score_clip=10.0)
    assert r.tolist() == [10.0, 0.0, -1.0]
    adv = gad_whole_response_advantage(torch.tensor([1.0, 3.0, 5.0]), ["a", "a", "b"])
    assert adv.tolist() == approx([-1 / (math.sqrt(2) + 1e-6), 1 / (math.sqrt(2) + 1e-6), 5 / (1 + 1e-6)])


# ------------------------------------------------------------------------------------------- advantages

# idx: 0 a, 1 a, 2 b (group of size 1), 3 a (format-invalid), 4 c, 5 c (an all-invalid group)
S_CAP = torch.tensor([1.0, 3.0, 2.0, 100.0, 5.0, 7.0])
S_COT = torch.tensor([2.0, 0.0, -4.0, 100.0, 1.0, 1.0])
FMT = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
ACC = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
UID = ["a", "a", "b", "a", "c", "c"]
# Hand-worked (see comments): group a caption after placement [1, 3, 0] (invalid -> min(1,3) - 1),
# cot [2, 0, -1]; both have unbiased std sqrt(7/3) -> A_align(a) = [0.4364355, 0.4364355, -0.8728710];
# group b: GN(x) = x / (1 + 1e-6) -> 0.5*2 + 0.5*(-4) = -0.999999; group c: all invalid -> -1, -1 -> 0.
EXPECTED = {
    "align": [0.4364355, 0.4364355, -0.999999, -2.3728710, -1.5, -1.5],
    "acc_gating": [0.4364355, -0.5635645, -1.999999, -2.3728710, -1.5, -1.5],
    "gated_align": [0.4364355, -1.0, -1.0, -1.5, -1.5, -1.5],
    # GN(acc + fmt): a [2,1,0] -> [1,0,-1]/(1+eps); b -> 1/(1+eps); c [1,0] -> +-0.5/(sqrt(.5)+eps)
    "rlvr": [1.4364345, 0.0, 0.999999, -0.999999, 0.7071058, -0.7071058],
    # raw a [2, 0, -1.5] -> GN [1.0440732, -0.0949157, -0.9491575]; c [-0.5, -1.5] -> +-0.7071058
    "rlvr_v2": [1.4805087, -0.0949157, 0.0, -0.9491575, 0.7071058, -0.7071058],
    # same a; c [-1.5, -1.5] -> 0; W samples get -A_align
    "sign_align": [1.4805087, -0.5313512, 0.999999, -0.9491575, 0.0, 0.0],
}


def test_registry_has_six_modes():
    assert ADVANTAGE_MODES.names() == sorted(EXPECTED)


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_advantage_modes_hand_worked(mode):
    adv = grpo_multi_reward(mode, S_CAP, S_COT, FMT, UID, acc=ACC)
    assert adv.shape == (6,)
    assert adv.tolist() == approx(EXPECTED[mode], rel=1e-5, abs=2e-6)


def test_align_mode_needs_no_acc_and_others_do():
    grpo_multi_reward("align", S_CAP, S_COT, FMT, UID)
    with pytest.raises(ValueError, match="acc"):
        grpo_multi_reward("rlvr", S_CAP, S_COT, FMT, UID)
    with pytest.raises(KeyError):
        grpo_multi_reward("nope", S_CAP, S_COT, FMT, UID)


def test_invalid_placement_group_min_valid_minus_one():
    inv, G = group_index(["g", "g", "g", "h"])
    out = place_invalid_scores(torch.tensor([-2.0, 5.0, 9.0, 4.0]), torch.tensor([False, False, True, True]), inv, G)
    assert out.tolist() == [-2.0, 5.0, -3.0, -1.0]


def test_group_normalize_and_weights():
    inv, G = group_index(torch.tensor([7, 7, 3]))
    assert inv.tolist() == [0, 0, 1] and G == 2
    out = group_normalize(torch.tensor([1.0, 3.0, 4.0]), inv, G)
    s = math.sqrt(2.0)
    assert out.tolist() == approx([-1 / (s + 1e-6), 1 / (s + 1e-6), 4 / (1 + 1e-6)])
    # caption-only weighting and a different format penalty via overrides
    adv = grpo_multi_reward("align", S_CAP, S_COT, FMT, UID, caption_weight=1.0, cot_weight=0.0, format_penalty=2.0)
    assert adv[3].item() == approx(-0.8728710 - 2.0)
    assert adv[0].item() == approx(-0.2182177)
    cfg = MultiRewardConfig()
    assert (cfg.caption_weight, cfg.cot_weight, cfg.format_penalty, cfg.eps) == (0.5, 0.5, 1.5, 1e-6)
    tok = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert tok.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]


def test_select_mode_priority():
    assert select_mode({}) == "align"
    assert select_mode({"use_acc_gating": True}) == "acc_gating"
    assert select_mode(use_acc_gating=True, use_gated_align=True) == "gated_align"
    assert select_mode(use_gated_align=True, use_rlvr=True) == "rlvr"
    assert select_mode(use_rlvr=True, use_rlvr_v2=True) == "rlvr_v2"
    assert select_mode({"use_rlvr_v2": True, "use_sign_align": True, "use_acc_gating": True}) == "sign_align"
    assert select_mode({"use_sign_align": False}) == "align"
    with pytest.raises(KeyError):
        select_mode({"use_sing_align": True})


# ---------------------------------------------------------------------------------------------- configs


def test_align_configs_defaults_and_strictness():
    from pydantic import ValidationError

    a = AlignConfig()
    assert (a.steps, a.prompts_per_step, a.n, a.batch_size) == (500, 4, 16, 64)
    assert (a.actor_lr, a.critic_lr, a.score_clip, a.score_reg_coef, a.format_penalty) == (1e-6, 1e-6, 10.0, 0.001, 1.5)
    assert (a.advantage_mode, a.variant, a.terminator_convention, a.critic_positions) == (
        "align", "prism", "uniform", "mrope")
    assert (a.clip_ratio_low, a.clip_ratio_high, a.dual_clip, a.loss_agg_mode) == (0.2, 0.2, 3.0, "token-mean")
    w = DiscWarmupConfig()
    assert (w.lr, w.weight_decay, w.warmup_ratio, w.epochs, w.grad_clip, w.aux_coef, w.seed) == (
        1e-5, 0.01, 0.1, 1, 1.0, 0.01, 42)
    d = DiscriminatorConfig()
    assert (d.num_experts, d.top_k, d.expert_noise_std, d.router_init_std, d.head_dropout, d.kind) == (
        4, 2, 0.01, 0.02, 0.1, "moe")
    with pytest.raises(ValidationError):
        AlignConfig(stepz=3)
    with pytest.raises(ValidationError):
        DiscriminatorConfig(num_experts=2, top_k=3)
    for model in (AlignConfig, DiscWarmupConfig, DiscriminatorConfig):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
