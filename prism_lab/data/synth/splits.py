"""The training files of the synthetic task: the public SFT mixture, the teacher demonstrations, the
caption pre-training split, the RL parquet and the discriminator warmup pairs (each writer returns its row
count and its family counts)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from prism_lab.data.images import encode_png
from prism_lab.data.rl_parquet import write_rl_parquet
from prism_lab.data.sft_json import write_sft_json
from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.describe import teacher_caption
from prism_lab.data.synth.files import (
    RL_TRAIN,
    SFT_CAPTION,
    SFT_HELDOUT,
    SFT_INSTRUCT,
    SFT_PUBLIC,
    SFT_TEACHER,
    WARMUP,
)
from prism_lab.data.synth.responses import (
    public_response,
    split_response,
    teacher_response,
)
from prism_lab.data.synth.sampling import (
    Progress,
    chat_messages,
    draw_item,
    family_weights,
    item_meta,
    n_objects,
    user_text,
)
from prism_lab.data.synth.scenes import draw, random_scene
from prism_lab.data.warmup_jsonl import write_warmup_jsonl
from prism_lab.prompts import format_cot, format_response
from prism_lab.seeds import derive_seed

_TRAIN_EASY = {"count": 3, "presence": 2, "mcq_count": 1, "mcq_most": 1, "mcq_colour": 1, "mcq_shape": 1, "arith": 3}
#: The base stage's instruction rows lean on what an instruction-tuned model knows of a scene: what is in it
#: (presence), how many (counting), which colour and which shape.
_INSTRUCT = {"count": 3, "presence": 4, "mcq_count": 1, "mcq_most": 1, "mcq_colour": 2, "mcq_shape": 2, "arith": 1}
_TRAIN_HARD = {"count": 2, "presence": 1, "mcq_count": 1, "mcq_most": 2, "mcq_colour": 0, "mcq_shape": 0, "arith": 5}


def train_split(cfg: SynthConfig, name: str, n: int, hard_share: float, seen: set, tmp: Path, prog: Progress,
                 *, write_images: bool = True):
    """Yield (item_id, scene, item, difficulty, png, rng) for one training split."""
    easy_w = family_weights(_TRAIN_EASY, cfg.families)
    hard_w = family_weights(_TRAIN_HARD, cfg.families) or easy_w
    for i in range(n):
        rng = random.Random(derive_seed(cfg.seed, name, i))
        hard = rng.random() < hard_share
        scene, item = draw_item(rng, cfg, hard_w if hard else easy_w, hard)
        seen.add((scene.signature(), item.question))
        item_id = f"{name}-{i:05d}"
        png = encode_png(draw(scene))
        if write_images:
            (tmp / "images" / f"{item_id}.png").write_bytes(png)
        prog(name, i + 1, n)
        yield item_id, scene, item, "hard" if hard else "easy", png, rng


def public_noise(cfg: SynthConfig, *, format_errors: bool) -> dict[str, float]:
    return {
        "wrong_answer_share": cfg.public_wrong_answer_share,
        "wrong_caption_share": cfg.public_wrong_caption_share,
        "format_error_share": cfg.public_format_error_share if format_errors else 0.0,
    }


def write_public(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    for item_id, scene, item, diff, _png, rng in train_split(cfg, "public", cfg.n_sft_public, cfg.hard_share, seen, tmp, prog):
        resp = public_response(rng, item, scene, cfg.colours, cfg.shapes, **public_noise(cfg, format_errors=True))
        meta = item_meta(item_id, item, scene, diff)
        meta.update(response_answer=resp.answer, wrong_answer=resp.wrong_answer,
                    wrong_caption=resp.wrong_caption, format_error=resp.format_error)
        rows.append({"messages": chat_messages(cfg, user_text(item), resp.text),
                     "images": [f"images/{item_id}.png"], "meta": meta})
        fam[item.family] += 1
    return write_sft_json(tmp / SFT_PUBLIC, rows), fam


def write_teacher(cfg, tmp, seen, prog, *, split: str = "teacher", n: int | None = None,
                  fname: str = SFT_TEACHER) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    n = cfg.n_teacher if n is None else n
    for item_id, scene, item, diff, _png, _rng in train_split(cfg, split, n, cfg.teacher_hard_share, seen, tmp, prog):
        text = teacher_response(item, scene, cfg.colours, cfg.shapes)
        rows.append({"messages": chat_messages(cfg, user_text(item), text),
                     "images": [f"images/{item_id}.png"], "meta": item_meta(item_id, item, scene, diff)})
        fam[item.family] += 1
    return write_sft_json(tmp / fname, rows), fam


def write_heldout(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    """Teacher rows of items no training file has (``seen``): the drift measurements' held-out set."""
    return write_teacher(cfg, tmp, seen, prog, split="heldout", n=cfg.n_heldout, fname=SFT_HELDOUT)


#: User prompts of the caption split (cycled by row, so every phrasing is seen).
CAPTION_PROMPTS = (
    "Describe the image.",
    "List every shape in the image by colour.",
    "What is in the image?",
)


def write_caption(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    """Image -> ``<caption>`` block with the dense caption, on scenes of every difficulty."""
    rows, kinds = [], Counter()
    for i in range(cfg.n_caption):
        rng = random.Random(derive_seed(cfg.seed, "caption", i))
        hard = rng.random() < cfg.hard_share
        scene = random_scene(rng, cfg.image_size, n_objects(rng, cfg, hard), cfg.colours, cfg.shapes,
                             cfg.min_object_size, cfg.max_object_size)
        item_id = f"caption-{i:05d}"
        (tmp / "images" / f"{item_id}.png").write_bytes(encode_png(draw(scene)))
        prompt = CAPTION_PROMPTS[i % len(CAPTION_PROMPTS)]
        target = f"<caption>\n{teacher_caption(scene, cfg.colours, cfg.shapes)}\n</caption>"
        meta = {"id": item_id, "family": "caption", "difficulty": "hard" if hard else "easy",
                "image_size": scene.size, "scene": scene.to_list()}
        rows.append({"messages": chat_messages(cfg, "<image>" + prompt, target), "images": [f"images/{item_id}.png"],
                     "meta": meta})
        kinds["caption"] += 1
        prog("caption", i + 1, cfg.n_caption)
    return write_sft_json(tmp / SFT_CAPTION, rows), kinds


#: Instruction families of which a share (``instruct_caption_first_share``) is answered caption-first: the
#: multiple-choice questions that count shapes. Caption-first colour and shape questions cost the base those
#: questions (docs/cpu_notes.md §11).
CAPTION_FIRST_FAMILIES = ("mcq_count", "mcq_most")


def write_instruct(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    """Question -> the reasoning and the correct answer (``<think>`` and ``<answer>`` blocks, no system prompt): the
    base stage's instruction data. It answers as an instruction-tuned model does before PRISM's caption-first
    format (which SFT teaches), and it learns to restate what the question asks about right after the question,
    which the caption-first format then needs across a whole caption (docs/cpu_notes.md §8). A share of the
    counting multiple-choice rows puts the dense caption first, so that the base also copies the options across a
    caption (docs/cpu_notes.md §13)."""
    rows, fam = [], Counter()
    weights = family_weights(_INSTRUCT, cfg.families)
    for i in range(cfg.n_instruct):
        rng = random.Random(derive_seed(cfg.seed, "instruct", i))
        hard = rng.random() < cfg.hard_share
        scene, item = draw_item(rng, cfg, weights, hard)
        seen.add((scene.signature(), item.question))
        item_id = f"instruct-{i:05d}"
        (tmp / "images" / f"{item_id}.png").write_bytes(encode_png(draw(scene)))
        if item.family in CAPTION_FIRST_FAMILIES and rng.random() < cfg.instruct_caption_first_share:
            reply = format_response(teacher_caption(scene, cfg.colours, cfg.shapes), item.teacher_think, item.answer)
        else:
            reply = format_cot(item.teacher_think, item.answer)
        plain = [{"role": "user", "content": user_text(item)}, {"role": "assistant", "content": reply}]
        rows.append({"messages": plain, "images": [f"images/{item_id}.png"],
                     "meta": item_meta(item_id, item, scene, "hard" if hard else "easy")})
        fam[item.family] += 1
        prog("instruct", i + 1, cfg.n_instruct)
    return write_sft_json(tmp / SFT_INSTRUCT, rows), fam


def write_rl(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    split = train_split(cfg, "rl", cfg.n_rl, cfg.hard_share, seen, tmp, prog, write_images=False)
    for i, (item_id, scene, item, diff, png, _rng) in enumerate(split):
        cap, cot = split_response(teacher_response(item, scene, cfg.colours, cfg.shapes))
        rows.append({
            "data_source": cfg.data_source,
            "prompt": chat_messages(cfg, user_text(item), None),
            "images": [{"bytes": png, "path": None}],
            "reward_model": {"ground_truth": item.answer, "equivalent_answers": item.equivalent_answers},
            "extra_info": {
                "index": i, "family": item.family, "split": "train", "item_id": item_id, "difficulty": diff,
                "meta": json.dumps(item_meta(item_id, item, scene, diff), sort_keys=True),
            },
            "teacher_caption": cap,
            "teacher_cot": cot,
        })
        fam[item.family] += 1
    return write_rl_parquet(tmp / RL_TRAIN, rows), fam


def write_warmup(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    for item_id, scene, item, diff, _png, rng in train_split(cfg, "warmup", cfg.n_warmup, cfg.hard_share, seen, tmp, prog):
        t_cap, t_cot = split_response(teacher_response(item, scene, cfg.colours, cfg.shapes))
        resp = public_response(rng, item, scene, cfg.colours, cfg.shapes, **public_noise(cfg, format_errors=False))
        s_cap, s_cot = split_response(resp.text)
        rows.append({
            "prompt": item.question, "image": f"images/{item_id}.png",
            "teacher_caption": t_cap, "student_caption": s_cap, "teacher_cot": t_cot, "student_cot": s_cot,
            "id": item_id, "family": item.family,
        })
        fam[item.family] += 1
    return write_warmup_jsonl(tmp / WARMUP, rows), fam
