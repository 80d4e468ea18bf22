"""SFT stage: collate/label masking, LR schedule, the training loop, resume equivalence, the runner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from prism_lab.config.sft import SFTConfig
from prism_lab.data.catalog import DataCatalog
from prism_lab.data.collate import (
    IGNORE_INDEX,
    SFTCollator,
    encode_chat,
    encode_chats,
    even_split,
    length_group_indices,
    pad_batch,
    to_content_messages,
)
from prism_lab.data.sft_json import SFTExample, read_sft_json
from prism_lab.errors import DataError
from prism_lab.models import build_tiny_policy, build_tokenizer, load_policy
from prism_lab.prompts import SYSTEM_PROMPT
from prism_lab.trainers.checkpoint import find_resume_state
from prism_lab.trainers.common import (
    cosine_with_warmup,
    make_cosine_scheduler,
    warmup_steps_for,
)
from prism_lab.trainers.sft import TrainingInterrupted, total_steps_for, train_sft

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 30), "blue": (30, 30, 220)}


def _write_fixture(root: Path, n: int = 24) -> Path:
    """A small ShareGPT SFT file: 'what colour is the square?' over 32x32 images."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = sorted(COLOURS)
    rows = []
    for i in range(n):
        colour = names[i % 3]
        img = Image.new("RGB", (32, 32), (255, 255, 255))
        img.paste(COLOURS[colour], (8, 8, 24, 24))
        rel = f"images/{i:03d}.png"
        img.save(root / rel)
        rows.append({
            "messages": [
                {"role": "user", "content": f"<image>what colour is the square ? item {i % 5}"},
                {"role": "assistant", "content": f"<answer>\n{colour}\n</answer>"},
            ],
            "images": [rel],
        })
    path = root / "sft_public.json"
    path.write_text(json.dumps(rows, indent=1))
    return path


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sftdata")
    _write_fixture(d)
    DataCatalog(sft_public=["sft_public.json"], image_root=".", source="local").save(d)
    return d


@pytest.fixture(scope="module")
def examples(fixture_dir) -> list[SFTExample]:
    return read_sft_json(fixture_dir / "sft_public.json")


@pytest.fixture(scope="module")
def tokenizer(examples):
    texts = [SYSTEM_PROMPT] + [m["content"].replace("<image>", "") for e in examples for m in e.messages]
    return build_tokenizer(texts, vocab_size=300)


def _policy(tokenizer, seed: int = 0):
    return build_tiny_policy("tiny-xs", tokenizer, seed=seed)


def _cfg(**kw) -> SFTConfig:
    base = dict(model="tiny-xs", lr=3e-3, weight_decay=0.01, adam_betas=(0.9, 0.98), batch_size=4, grad_accum=2,
                max_steps=10, epochs=100.0, warmup_ratio=0.1, min_lr_ratio=0.1, max_length=256, save_every=5, log_every=5,
                threads=1, seed=0)
    base.update(kw)
    return SFTConfig(**base)


# ------------------------------------------------------------------------------------------ collate
def test_labels_cover_exactly_the_assistant_tokens(tokenizer, examples):
    _, proc = _policy(tokenizer)
    ex = examples[0]
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] + ex.messages
    row = encode_chat(proc, msgs, ex.load_images(), max_length=512)
    tok = proc.tokenizer
    unmasked = row.input_ids[row.labels != IGNORE_INDEX]
    assert tok.decode(unmasked) == ex.response + "<|im_end|>"
    # the masked part decodes to the whole prompt plus the trailing newline
    full = tok.decode(row.input_ids)
    assert full.startswith("<|im_start|>system\n" + SYSTEM_PROMPT)
    assert full.endswith("<|im_start|>assistant\n" + ex.response + "<|im_end|>\n")
    labelled = (row.labels != IGNORE_INDEX).nonzero().flatten()
    assert labelled.tolist() == list(range(int(labelled[0]), int(labelled[-1]) + 1))  # one contiguous span
    assert torch.equal(row.labels[labelled], row.input_ids[labelled])
    # image placeholder expanded: 32x32 -> 4 patches -> 1 merged token; mm_token_type_ids marks it
    img_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((row.input_ids == img_id).sum()) == 1
    assert row.mm_token_type_ids is not None and int(row.mm_token_type_ids.sum()) == 1
    assert row.pixel_values.shape[0] == 4 and row.image_grid_thw.tolist() == [[1, 2, 2]]


def test_content_messages_and_padding(tokenizer, examples):
    msgs = to_content_messages([{"role": "user", "content": "a <image> b<image>"}, {"role": "assistant", "content": "x"}])
    assert msgs[0]["content"] == [{"type": "text", "text": "a "}, {"type": "image"}, {"type": "text", "text": " b"},
                                  {"type": "image"}]
    assert msgs[1]["content"] == "x"
    _, proc = _policy(tokenizer)
    batch = SFTCollator(proc, max_length=512)(examples[:3])
    rows = [encode_chat(proc, e.messages, e.load_images()) for e in examples[:3]]
    width = max(len(r) for r in rows)
    assert batch["input_ids"].shape == (3, width)
    for i, r in enumerate(rows):
        n = len(r)
        assert torch.equal(batch["input_ids"][i, :n], r.input_ids)
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
    assert batch["pixel_values"].shape[0] == 12 and batch["image_grid_thw"].shape == (3, 3)
    # batched encoding (one processor call) == row by row, including a multi-turn, two-image conversation
    multi = [{"role": "user", "content": "<image>first ?"}, {"role": "assistant", "content": "one"},
             {"role": "user", "content": "second <image> ?"}, {"role": "assistant", "content": "two"}]
    imgs = [e.load_images() for e in examples[:3]]
    convs = [e.messages for e in examples[:3]] + [multi]
    batched = encode_chats(proc, convs, imgs + [imgs[0] + imgs[1]])
    for r, c, im in zip(batched, convs, imgs + [imgs[0] + imgs[1]]):
        single = encode_chat(proc, c, im)
        for f in ("input_ids", "labels", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
            assert torch.equal(getattr(r, f), getattr(single, f)), f
    assert proc.tokenizer.decode(batched[3].input_ids[batched[3].labels != IGNORE_INDEX]) == "one<|im_end|>two<|im_end|>"
    assert batched[3].image_grid_thw.shape == (2, 3) and batched[3].pixel_values.shape[0] == 8
    left = pad_batch(rows, pad_token_id=0, padding_side="left")
    assert left["attention_mask"][:, -1].all()
    # truncation keeps the prefix
    short = encode_chat(proc, examples[0].messages, examples[0].load_images(), max_length=len(rows[0]) - 2)
    assert torch.equal(short.input_ids, rows[0].input_ids[:-2])


def test_collator_error_names_file_and_row(tokenizer, tmp_path):
    _, proc = _policy(tokenizer)
    bad = SFTExample(messages=[{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
                     images=[tmp_path / "missing.png"], row=7, source=str(tmp_path / "x.json"))
    with pytest.raises(DataError, match=r"x\.json: row 7"):
        SFTCollator(proc)([bad])
    bad2 = SFTExample(messages=[{"role": "user", "content": "<image><image>q"}, {"role": "assistant", "content": "a"}],
                      images=[], row=3, source="y.json")
    with pytest.raises(DataError, match=r"y\.json: row 3: cannot encode"):
        SFTCollator(proc)([bad2])


def test_length_group_indices_sort_by_length_and_cut_near_equal_runs():
    # lengths 5 3 9 3 7 -> by length (ties in row order): rows 1, 3, 0, 4, 2 -> runs of 3 and 2
    assert length_group_indices([5, 3, 9, 3, 7], 2) == [[1, 3, 0], [4, 2]]
    assert length_group_indices([5, 3, 9, 3, 7], 1) == [[1, 3, 0, 4, 2]]
    assert length_group_indices([4, 1, 2, 3, 6, 5, 7], 3) == [[1, 2, 3], [0, 5], [4, 6]]
    assert length_group_indices([2, 1], 4) == [[1], [0]]  # never an empty run
    assert length_group_indices([], 3) == []
    with pytest.raises(ValueError, match="groups must be >= 1"):
        length_group_indices([1], 0)


def test_even_split_keeps_order_and_puts_the_larger_runs_first():
    # 7 items in 3 runs: 7 = 3 + 2 + 2
    assert even_split(list("abcdefg"), 3) == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    assert even_split([1, 2], 5) == [[1], [2]]  # no empty run
    assert even_split([], 2) == []
    assert even_split([1, 2, 3], 0) == []


def _varied(examples: list[SFTExample]) -> list[SFTExample]:
    """The fixture rows with questions of 4 different lengths."""
    return [SFTExample(messages=[{"role": "user", "content": e.messages[0]["content"] + " and then" * (3 * (i % 4))},
                                 e.messages[1]], images=e.images, row=e.row, source=e.source)
            for i, e in enumerate(examples)]


def test_length_groups_hold_the_same_rows_with_less_padding(tokenizer, examples):
    _, proc = _policy(tokenizer)
    collate = SFTCollator(proc, max_length=512)
    rows = _varied(examples)[:8]
    one = collate(rows)
    parts = collate.length_groups(rows, 3)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 3, 2]
    assert sum(int(p["attention_mask"].sum()) for p in parts) == int(one["attention_mask"].sum())
    assert sum(p["attention_mask"].numel() for p in parts) < one["attention_mask"].numel()
    # every row of the batch is in exactly one run, unchanged
    whole = {tuple(r[m.bool()].tolist()) for r, m in zip(one["input_ids"], one["attention_mask"])}
    split = [tuple(r[m.bool()].tolist()) for p in parts for r, m in zip(p["input_ids"], p["attention_mask"])]
    assert len(split) == 8 and set(split) == whole
    assert sum(p["pixel_values"].shape[0] for p in parts) == one["pixel_values"].shape[0]
    widths = [p["input_ids"].shape[1] for p in parts]
    assert widths == sorted(widths) and widths[-1] == one["input_ids"].shape[1]


def test_length_groups_train_like_one_padded_batch(tokenizer, examples):
    """The loss is summed over the step's label tokens, so cutting a batch by length changes only float rounding."""
    rows = _varied(examples)
    ref_model, proc = _policy(tokenizer)
    ref = train_sft(ref_model, proc, rows, _cfg(max_steps=6, batch_size=8, grad_accum=1), progress=False)
    model, proc = _policy(tokenizer)
    res = train_sft(model, proc, rows, _cfg(max_steps=6, batch_size=8, grad_accum=1, length_groups=4), progress=False)
    assert res.tokens_seen == ref.tokens_seen and res.label_tokens_seen == ref.label_tokens_seen
    assert res.final_loss == pytest.approx(ref.final_loss, rel=1e-4)
    a, b = _weights(ref_model), _weights(model)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    moved = max(float((a[k] - w).abs().max()) for k, w in _weights(_policy(tokenizer)[0]).items())
    assert moved > 1e-3  # the runs trained: equal weights are not the untouched init


def test_length_groups_must_fit_a_process_share():
    assert _cfg(batch_size=8, length_groups=8).length_groups == 8
    with pytest.raises(ValueError, match=r"length_groups \(5\) must be at most the rows of a micro-batch per process "
                                         r"\(4: batch_size 8 over 2\)"):
        _cfg(batch_size=8, length_groups=5, resources={"processes": 2})


# ------------------------------------------------------------------------------------------ schedule
def test_cosine_schedule_values():
    kw = dict(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert cosine_with_warmup(0, **kw) == 0.0  # warmup start
    assert cosine_with_warmup(5, **kw) == pytest.approx(0.5)
    assert cosine_with_warmup(10, **kw) == pytest.approx(1.0)  # peak
    assert cosine_with_warmup(55, **kw) == pytest.approx(0.55)  # half-way through the cosine: 0.1 + 0.9 * 0.5
    assert cosine_with_warmup(32.5, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert cosine_with_warmup(100, **kw) == pytest.approx(0.1)  # floor
    assert cosine_with_warmup(150, **kw) == pytest.approx(0.1)
    assert cosine_with_warmup(0, total_steps=10, warmup_steps=0) == 1.0
    assert warmup_steps_for(100, 0.1) == 10 and warmup_steps_for(7, 0.1) == 1 and warmup_steps_for(7, 0.0) == 0
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = make_cosine_scheduler(opt, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    lrs = []
    for _ in range(101):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(2.0) and lrs[55] == pytest.approx(1.1) and lrs[100] == pytest.approx(0.2)


def test_total_steps():
    assert total_steps_for(_cfg(max_steps=None, epochs=2.0), 24) == 6  # 2 * ceil(24 / 8)
    assert total_steps_for(_cfg(max_steps=4, epochs=2.0), 24) == 4


# ------------------------------------------------------------------------------------------ training
def test_short_run_lowers_the_loss(tokenizer, examples):
    model, proc = _policy(tokenizer)
    seen = []
    cfg = _cfg(max_steps=20, batch_size=8, grad_accum=1, log_every=4, warmup_ratio=0.1)
    res = train_sft(model, proc, examples, cfg, log_metrics=lambda s, v: seen.append((s, v)), progress=False)
    assert res.steps == 20 and res.stopped_by == "max_steps"
    losses = [v["loss"] for _, v in seen]
    assert [s for s, _ in seen] == [4, 8, 12, 16, 20]
    assert set(seen[0][1]) == {"loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "epoch"}
    assert losses[-1] < 0.6 * losses[0], losses
    assert res.final_loss == pytest.approx(losses[-1])
    assert res.samples_seen == 160 and res.epochs_done == pytest.approx(160 / len(examples))
    assert res.tokens_seen > res.label_tokens_seen > 0


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_matches_uninterrupted_run(tokenizer, examples, tmp_path):
    cfg = _cfg(max_steps=10, save_every=5, log_every=5)
    ref_model, proc = _policy(tokenizer)
    ref = train_sft(ref_model, proc, examples, cfg, resume_dir=tmp_path / "ref_resume", progress=False)
    assert ref.steps == 10 and find_resume_state(tmp_path / "ref_resume") is not None  # saved at step 5

    model, proc = _policy(tokenizer)
    resume = tmp_path / "resume"
    with pytest.raises(TrainingInterrupted):  # "killed" after step 7; the last checkpoint is step 5
        train_sft(model, proc, examples, cfg, resume_dir=resume, stop_after_step=7, progress=False)
    meta = json.loads((resume / "meta.json").read_text())
    assert meta["step"] == 5 and meta["epoch"] == 1 and meta["pos"] == 16  # 5 steps x 8 = 40 = 24 + 16

    fresh, proc = _policy(tokenizer, seed=123)  # different init: everything must come from the checkpoint
    res = train_sft(fresh, proc, examples, cfg, resume_dir=resume, progress=False)
    assert res.resumed_from_step == 5 and res.steps == 10 and res.samples_seen == ref.samples_seen
    a, b = _weights(ref_model), _weights(fresh)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k
    assert res.final_loss == pytest.approx(ref.final_loss, rel=1e-4)


def test_time_budget_stops_cleanly(tokenizer, examples):
    model, proc = _policy(tokenizer)
    cfg = _cfg(max_steps=1000, max_minutes=0.02)  # 1.2 s
    res = train_sft(model, proc, examples, cfg, progress=False)
    assert res.stopped_by == "time" and 0 < res.steps < 1000


# ------------------------------------------------------------------------------------------ runner
def test_runner_end_to_end(fixture_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_LAB_WANDB", "disabled")
    from prism_lab.harness.context import InputArtifact, StageContext
    from prism_lab.harness.ledger import Ledger
    from prism_lab.harness.tracking import Tracker
    from prism_lab.stages.sft import run

    root = tmp_path / "root"
    ledger = Ledger(root)
    key = "f" * 64
    out = root / "runs" / "sft" / f".{key[:16]}.partial"
    out.mkdir(parents=True)
    cfg = _cfg(max_steps=6, save_every=3, log_every=2, tokenizer_vocab_size=300)
    tracker = Tracker(ledger, key, kind="sft", label="sft test", config=cfg.model_dump(mode="json"), run_dir=out)
    ctx = StageContext(key=key, kind="sft", label="sft test", config=cfg,
                       inputs={"data": InputArtifact("d" * 64, "data", fixture_dir, {})}, out_dir=out, root=root,
                       ledger=ledger, tracker=tracker)
    # first attempt dies after step 4 (checkpoint at 3); the second attempt resumes from the partial dir
    import prism_lab.trainers.sft as trainer_mod

    real = trainer_mod.train_sft
    monkeypatch.setattr(trainer_mod, "train_sft", lambda *a, **k: real(*a, stop_after_step=4, **k))
    with pytest.raises(TrainingInterrupted):
        run(ctx)
    assert json.loads((out / "resume" / "meta.json").read_text())["step"] == 3
    monkeypatch.setattr(trainer_mod, "train_sft", real)
    summary = run(ctx)
    tracker.finish()
    assert summary["resumed_from_step"] == 3
    assert summary["steps"] == 6 and summary["stopped_by"] == "max_steps" and summary["n_examples"] == 24
    assert summary["final_loss"] is not None and summary["samples_per_s"] > 0 and summary["tokens_seen"] > 0
    assert summary["model_source"] == "preset"
    json.dumps(summary)  # must be JSON-serialisable for run.json
    assert not (out / "resume").exists() and find_resume_state(out / "resume") is None
    names = {name for _, name, _ in ledger.metrics(key)}
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "epoch"} <= names
    steps = sorted({s for s, name, _ in ledger.metrics(key) if name == "loss"})
    assert steps == [2, 4, 6]

    model, proc = load_policy(out / "model")
    ex = read_sft_json(fixture_dir / "sft_public.json")[0]
    prompt = proc.apply_chat_template(to_content_messages(ex.prompt_messages), tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[prompt], images=ex.load_images(), return_tensors="pt")
    gen = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert gen.shape[1] > inputs["input_ids"].shape[1]
    ledger.close()


def test_vision_tower_gets_its_own_learning_rate():
    from prism_lab.models import build_tiny_policy, build_tokenizer
    from prism_lab.trainers.sft import _param_groups

    tok = build_tokenizer(["a red circle", "0123456789"], vocab_size=300)
    model, _ = build_tiny_policy("tiny-xs", tok, seed=0)
    groups = _param_groups(model, 0.01, 1e-3, vision_lr_scale=10.0)
    vision = {id(p) for p in model.model.visual.parameters()}
    n_seen = 0
    for g in groups:
        in_vision = {id(p) in vision for p in g["params"]}
        assert len(in_vision) == 1  # a group is all-vision or all-language
        assert g["lr"] == pytest.approx(1e-2 if in_vision.pop() else 1e-3)
        assert g["weight_decay"] == (0.01 if g["params"][0].ndim >= 2 else 0.0)
        n_seen += len(g["params"])
    assert n_seen == sum(1 for p in model.parameters() if p.requires_grad)


def test_catalog_names_a_missing_sft_set():
    from prism_lab.data.catalog import synth_catalog

    cat = synth_catalog("data")
    assert [p.name for p in cat.sft_files(["public", "teacher"])] == ["sft_public.json", "sft_teacher.json"]
    with pytest.raises(DataError, match="no 'caption' SFT files.*n_caption"):
        cat.sft_files(["public", "caption"])
    with pytest.raises(DataError, match="unknown SFT dataset 'extra'"):
        cat.sft_files(["extra"])
    assert [p.name for p in synth_catalog("data", caption=True).sft_files(["caption"])] == ["sft_caption.json"]
    local = DataCatalog(sft_public=["a.json"], source="local")  # a local catalog lists every SFT file as public
    assert local.sft_files(["public", "teacher"]) == [Path("a.json")]


def _image_spread(model, proc, images) -> float:
    """Across-image std of the vision tower's merged output, relative to its mean magnitude."""
    batch = proc.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    feats = out.reshape(len(images), -1)
    return float(feats.std(0).mean() / feats.abs().mean())


def test_tiny_vision_tower_still_tells_images_apart_after_sft(tokenizer, tmp_path):
    """Regression: with Qwen3-VL's 0.5 normalisation a white background is a constant +1 input, the first
    AdamW steps push every patch-embedding weight the same way and the tower collapses to one output
    for every image. The tiny presets normalise white to 0, which keeps the images apart."""
    import random

    from prism_lab.data.synth.scenes import draw, random_scene

    rng = random.Random(0)
    shapes = []
    for i in range(48):
        scene = random_scene(rng, 64, rng.randint(1, 6), ["red", "green", "blue"], ["circle", "square"], 6, 12)
        path = tmp_path / f"{i}.png"
        draw(scene).save(path)
        shapes.append(SFTExample(messages=[{"role": "user", "content": "<image>what colour is the square ? item 1"},
                                           {"role": "assistant", "content": f"<answer>\n{scene.count('red')}\n</answer>"}],
                                 images=[path], source="scenes", row=i))
    images = [img for ex in shapes[:16] for img in ex.load_images()]
    kept = {}
    for name, mean in (("tiny preset", None), ("qwen3-vl normalisation", [0.5, 0.5, 0.5])):
        model, proc = _policy(tokenizer)
        if mean is not None:
            proc.image_processor.image_mean = mean
        before = _image_spread(model, proc, images)
        train_sft(model, proc, shapes, _cfg(max_steps=40, batch_size=16, grad_accum=1, lr=2e-3, warmup_ratio=0.0),
                  progress=False)
        model.eval()
        kept[name] = _image_spread(model, proc, images) / before
    assert proc.image_processor.image_mean == [0.5, 0.5, 0.5]
    assert kept["tiny preset"] > 5 * kept["qwen3-vl normalisation"], kept  # measured: 0.19 vs 0.016
