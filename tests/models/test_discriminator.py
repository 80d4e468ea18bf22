"""The MoE discriminator: upcycling, score head, router aux loss on real router logits, save/load, compat."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prism_lab.algos.disc_loss import router_load_balancing_loss
from prism_lab.errors import CheckpointError
from prism_lab.models.discriminator import (
    DISC_CONFIG_NAME,
    HEAD_FILE_NAME,
    Discriminator,
    build_discriminator,
    check_compatible,
    expert_weight_layout,
    load_discriminator,
    save_discriminator,
    score_at_last_valid_token,
    upcycle_dense_to_moe,
)

transformers = pytest.importorskip("transformers")

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
           "<|image_pad|>", "<|video_pad|>"]


def _tokenizer(extra_corpus: str = ""):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["<caption>\n- a red circle\n</caption>\n<think>\n3 shapes\n</think>\n<answer>\n3\n</answer>",
              "how many red circles are there ? the answer is 3" + extra_corpus] * 30
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")


def _processor(tok, **ip_kwargs):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    class NoVideoProcessor(Qwen3VLProcessor):  # Qwen3VLProcessor needs torchvision for its video part
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    kw = dict(patch_size=16, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32, max_pixels=128 * 128)
    kw.update(ip_kwargs)
    return NoVideoProcessor(image_processor=Qwen2VLImageProcessorPil(**kw), tokenizer=tok)


def _dense_model(tok, seed=0):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = tok.convert_tokens_to_ids
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]},
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           deepstack_visual_indexes=[0], num_position_embeddings=64),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    return Qwen3VLForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def stack():
    torch.set_num_threads(1)
    tok = _tokenizer()
    proc = _processor(tok)
    dense = _dense_model(tok)
    rng = np.random.default_rng(0)
    from PIL import Image

    imgs = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2)]
    prompt = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>how many red circles ?<|im_end|>\n"
    texts = [prompt + "<|im_start|>assistant\n<caption>\n- a red circle\n</caption><|im_end|>",
             prompt + "<|im_start|>assistant\nthe answer is 3<|im_end|>"]
    tok.padding_side = "left"
    batch = dict(proc(images=imgs, text=texts, return_tensors="pt", padding=True))
    return tok, proc, dense, batch


def test_score_at_last_valid_token_left_and_right_padding():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
    assert score_at_last_valid_token(per_token, right).tolist() == [2.0, 8.0, 0.0]
    assert score_at_last_valid_token(per_token, left).tolist() == [4.0, 8.0, 0.0]
    # prompt left-padded + segment right-padded (the stage-2 layout)
    mixed = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 0], [0, 1, 0, 0]])
    assert score_at_last_valid_token(per_token, mixed).tolist() == [3.0, 7.0, 9.0]


def test_upcycling_zero_noise_reproduces_dense(stack):
    tok, proc, dense, batch = stack
    moe = upcycle_dense_to_moe(dense, num_experts=4, top_k=2, noise_std=0.0, router_std=0.02, seed=0).eval()
    tc = moe.config.text_config
    assert (tc.num_experts, tc.num_experts_per_tok, tc.moe_intermediate_size) == (4, 2, 96)
    assert (tc.decoder_sparse_step, tc.mlp_only_layers, tc.router_aux_loss_coef) == (1, [], 0.01)
    assert moe.config.vision_config.depth == 2 and moe.config.image_token_id == dense.config.image_token_id
    # every non-MLP weight is copied exactly
    dsd, msd = dense.state_dict(), moe.state_dict()
    for k, v in dsd.items():
        if ".mlp.gate_proj" in k or ".mlp.up_proj" in k or ".mlp.down_proj" in k:
            continue
        assert torch.equal(msd[k], v), k
    # experts are exact copies; layout of the installed transformers: gate_up[e] = cat([Wg, Wu]) (out x in)
    ex = moe.model.language_model.layers[0].mlp.experts
    d_mlp = dense.model.language_model.layers[0].mlp
    assert expert_weight_layout(ex) == "out_in"
    for e in range(4):
        assert torch.equal(ex.gate_up_proj[e], torch.cat([d_mlp.gate_proj.weight, d_mlp.up_proj.weight], 0))
        assert torch.equal(ex.down_proj[e], d_mlp.down_proj.weight)
    router = moe.model.language_model.layers[0].mlp.gate.weight
    assert router.shape == (4, 64) and 0.01 < router.std().item() < 0.03
    # identical experts + renormalised top-k weights -> same function, whatever the router picks;
    # also with the router forced to one expert (top-1 via a huge weight on one row)
    with torch.no_grad():
        h_dense = dense.model(**batch, use_cache=False).last_hidden_state
        h_moe = moe.model(**batch, use_cache=False).last_hidden_state
        torch.testing.assert_close(h_moe, h_dense, atol=1e-5, rtol=1e-5)
        for layer in moe.model.language_model.layers:
            layer.mlp.gate.weight.zero_()
            layer.mlp.gate.weight[2] = 1e3
        out = moe.model(**batch, use_cache=False, output_router_logits=True)
        torch.testing.assert_close(out.last_hidden_state, h_dense, atol=1e-5, rtol=1e-5)


def test_upcycling_noise_scale_and_seed(stack):
    _, _, dense, _ = stack
    moe = upcycle_dense_to_moe(dense, noise_std=0.01, seed=3)
    again = upcycle_dense_to_moe(dense, noise_std=0.01, seed=3)
    ex = moe.model.language_model.layers[1].mlp.experts
    d_mlp = dense.model.language_model.layers[1].mlp
    base = torch.cat([d_mlp.gate_proj.weight, d_mlp.up_proj.weight], 0)
    diffs = torch.stack([ex.gate_up_proj[e] - base for e in range(4)])
    assert 0.009 < diffs.std().item() < 0.011 and abs(diffs.mean().item()) < 1e-3
    assert not torch.equal(ex.gate_up_proj[0], ex.gate_up_proj[1])
    assert 0.009 < (ex.down_proj[2] - d_mlp.down_proj.weight).std().item() < 0.011
    assert torch.equal(ex.gate_up_proj, again.model.language_model.layers[1].mlp.experts.gate_up_proj)


def test_discriminator_forward_router_logits_and_aux(stack):
    _, _, dense, batch = stack
    disc = build_discriminator(dense, kind="moe").eval()
    assert isinstance(disc, Discriminator) and disc.is_moe
    w = disc.head.v_head[1].weight
    assert w.shape == (1, 64) and w.abs().max().item() < 0.2
    with torch.no_grad():
        per_token, router = disc(**batch)
    B, T = batch["input_ids"].shape
    assert per_token.shape == (B, T) and len(router) == 2 and router[0].shape == (B * T, 4)
    assert disc.score(**batch).tolist() == per_token[:, -1].tolist()  # left padding: last column
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import (
        load_balancing_loss_func,
    )

    aux = router_load_balancing_loss(router, top_k=2, num_experts=4, attention_mask=batch["attention_mask"])
    ref = load_balancing_loss_func(router, 4, 2, batch["attention_mask"])
    assert aux.item() == pytest.approx(float(ref), rel=1e-5) and 1.5 < aux.item() < 2.5
    # the dense model is untouched by building the discriminator
    assert not any(".experts." in k for k in dense.state_dict())


def test_text_only_ignores_pixels(stack):
    _, _, dense, batch = stack
    disc = build_discriminator(dense, kind="text_only").eval()
    text_batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        a = disc.score(**batch)
        b = disc.score(**text_batch)
    assert torch.equal(a, b)
    moe = Discriminator(disc.backbone, kind="moe", head=disc.head).eval()
    with torch.no_grad():
        assert not torch.allclose(moe.score(**batch), a)


def test_save_load_round_trip_identical_scores(stack, tmp_path):
    tok, proc, dense, batch = stack
    disc = build_discriminator(dense, kind="moe").eval()
    out = save_discriminator(disc, proc, tmp_path / "disc")
    names = {p.name for p in out.iterdir()}
    assert {DISC_CONFIG_NAME, HEAD_FILE_NAME, "model.safetensors", "config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    meta = json.loads((out / DISC_CONFIG_NAME).read_text())
    assert meta["kind"] == "moe" and meta["head"]["dropout"] == 0.1
    loaded = load_discriminator(out, policy_processor=proc)
    assert not loaded.training and loaded.kind == "moe"
    with torch.no_grad():
        torch.testing.assert_close(loaded.score(**batch), disc.score(**batch), atol=0, rtol=0)
    # dense ablation round-trips too
    dd = build_discriminator(dense, kind="dense").eval()
    save_discriminator(dd, proc, tmp_path / "dense")
    dl = load_discriminator(tmp_path / "dense", policy_processor=proc)
    assert type(dl.backbone).__name__ == "Qwen3VLModel" and not dl.is_moe
    with torch.no_grad():
        assert torch.equal(dl.score(**batch), dd.score(**batch))


def test_incompatible_processor_refused(stack, tmp_path):
    tok, proc, dense, _ = stack
    disc = build_discriminator(dense, kind="moe")
    out = save_discriminator(disc, proc, tmp_path / "disc")
    check_compatible(proc, proc)  # same -> fine
    for bad in (_processor(tok, max_pixels=256 * 256), _processor(tok, image_mean=[0.5, 0.5, 0.5]),
                _processor(tok, merge_size=1)):
        with pytest.raises(CheckpointError, match="image processor"):
            load_discriminator(out, policy_processor=bad)
    other_tok = _tokenizer(extra_corpus=" zebra quokka xylophone")
    with pytest.raises(CheckpointError, match="vocabulary") as ei:
        load_discriminator(out, policy_processor=_processor(other_tok))
    assert "\n" not in str(ei.value)
    (out / DISC_CONFIG_NAME).unlink()
    with pytest.raises(CheckpointError, match=DISC_CONFIG_NAME):
        load_discriminator(out)
