"""The embedded synthetic multimodal task: coloured shapes, counting and arithmetic over counts.

``generate(cfg, out_dir)`` writes, deterministically and atomically, the three datasets the paper uses
plus held-out benchmarks, in the real schemas (so the same readers load the released PRISM data):

- ``sft_public.json``: broad, noisier SFT mixture (terse/partial captions, terse reasoning, a share of
  wrong answers, a few format breaks) -- the source of "SFT drift";
- ``sft_teacher.json``: dense, correct teacher demonstrations on the hardest items;
- ``sft_caption.json``: perception pre-training, "describe the image" -> the dense caption. It stands in
  for the visual pre-training a real Qwen3-VL checkpoint starts from (a tiny random-init tower learns
  to see mostly from it); the paper's SFT does not have it, and ``sft.datasets`` decides whether it is used;
- ``rl_train.parquet``: verl RLHF schema + ``teacher_caption``/``teacher_cot``;
- ``warmup_pairs.jsonl``: discriminator warmup pairs (teacher vs public-style student segments);
- ``bench/synth-{perception,reasoning,hallusion}.tsv``: VLMEvalKit TSVs, held out (own seeds, and no
  (image, question) pair shared with the training files);
- ``images/<id>.png`` and ``manifest.json`` (config, generator version, per-file sha256 and row counts).

Scenes: a white ``image_size`` square with 1..``max_objects`` free-placed non-overlapping shapes of
``min_object_size``..``max_object_size`` px (they straddle the 16 px patches; cpu_facts.md section 6).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


from prism_lab.data.bench_tsv import write_benchmark_tsv
from prism_lab.data.images import encode_png, png_to_base64
from prism_lab.data.synth.text_task import TEXT_TASK_FILE, write_text_task
from prism_lab.data.synth.questions import (
    Item,
    make_item,
    public_response,
    split_response,
    teacher_caption,
    teacher_response,
)
from prism_lab.data.rl_parquet import write_rl_parquet
from prism_lab.data.synth.scenes import Scene, draw, place_object, random_scene
from prism_lab.data.sft_json import write_sft_json
from prism_lab.data.warmup_jsonl import write_warmup_jsonl
from prism_lab.data.synth.config import SynthConfig
from prism_lab.errors import ConfigError
from prism_lab.prompts import SYSTEM_PROMPT

GENERATOR_VERSION = "3"

#: File names inside a generated data directory.
SFT_PUBLIC = "sft_public.json"
SFT_TEACHER = "sft_teacher.json"
SFT_CAPTION = "sft_caption.json"
SFT_HELDOUT = "sft_heldout.json"  # held-out teacher rows: drift measurements only, never trained on
RL_TRAIN = "rl_train.parquet"
WARMUP = "warmup_pairs.jsonl"
MANIFEST = "manifest.json"
BENCH_DIR = "bench"
BENCHMARKS = ("synth-perception", "synth-reasoning", "synth-hallusion")

_TRAIN_EASY = {"count": 3, "presence": 2, "mcq_count": 1, "mcq_most": 1, "mcq_colour": 1, "mcq_shape": 1, "arith": 3}
_TRAIN_HARD = {"count": 2, "presence": 1, "mcq_count": 1, "mcq_most": 2, "mcq_colour": 0, "mcq_shape": 0, "arith": 5}
_PERCEPTION = {"count": 3, "mcq_count": 2, "mcq_most": 1, "mcq_colour": 1, "mcq_shape": 1}
_REASONING = {"arith": 1}


def _validated(cfg: SynthConfig | Mapping[str, Any]) -> SynthConfig:
    if isinstance(cfg, SynthConfig):
        data = {k: getattr(cfg, k) for k in SynthConfig.model_fields}
        return SynthConfig.from_dict(data)
    if isinstance(cfg, Mapping):
        return SynthConfig.from_dict(cfg)
    raise ConfigError(f"synth config: expected a SynthConfig or a mapping, got {type(cfg).__name__}")


# ------------------------------------------------------------------------------------------ sampling
def _seed(*parts: object) -> int:
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big")


def _weights(table: dict[str, int], allowed: list[str] | None) -> dict[str, int]:
    w = {k: v for k, v in table.items() if v > 0 and (allowed is None or k in allowed)}
    return w


def _choose(rng: random.Random, w: dict[str, int]) -> str:
    keys = list(w)
    return rng.choices(keys, weights=[w[k] for k in keys], k=1)[0]


def _n_objects(rng: random.Random, cfg: SynthConfig, hard: bool) -> int:
    mid = max(cfg.min_objects, math.ceil(cfg.max_objects / 2))
    if hard:
        return rng.randint(min(mid + 1, cfg.max_objects), cfg.max_objects)
    return rng.randint(cfg.min_objects, mid)


def _draw_item(
    rng: random.Random,
    cfg: SynthConfig,
    weights: dict[str, int],
    hard: bool,
    forbid: set | None = None,
) -> tuple[Scene, Item]:
    for _ in range(200):
        scene = random_scene(
            rng, cfg.image_size, _n_objects(rng, cfg, hard), cfg.colours, cfg.shapes,
            cfg.min_object_size, cfg.max_object_size,
        )
        if not scene.objects:
            continue
        item = make_item(rng, scene, _choose(rng, weights), cfg.colours, cfg.shapes, hard=hard)
        if item is None:
            continue
        if forbid is not None and (scene.signature(), item.question) in forbid:
            continue
        return scene, item
    # Always feasible: a plain count question about any scene with at least one object.
    scene = random_scene(rng, cfg.image_size, max(1, cfg.min_objects), cfg.colours, cfg.shapes,
                         cfg.min_object_size, cfg.max_object_size)
    item = make_item(rng, scene, "count", cfg.colours, cfg.shapes, hard=hard)
    assert item is not None
    return scene, item


def _meta(item_id: str, item: Item, scene: Scene, difficulty: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "family": item.family,
        "form": item.form,
        "difficulty": difficulty,
        "answer": item.answer,
        "answer_type": item.answer_type,
        "options": item.options,
        "q": item.meta,
        "image_size": scene.size,
        "scene": scene.to_list(),
    }


def _user_text(item: Item) -> str:
    return "<image>" + item.question


def _messages(cfg: SynthConfig, user: str, assistant: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if cfg.include_system_prompt else []
    msgs.append({"role": "user", "content": user})
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return msgs


class _Progress:
    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.on and (done == total or done % 200 == 0):
            print(f"\rsynth: {what} {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ splits
def _train_split(cfg: SynthConfig, name: str, n: int, hard_share: float, seen: set, tmp: Path, prog: _Progress,
                 *, write_images: bool = True):
    """Yield (item_id, scene, item, difficulty, png, rng) for one training split."""
    easy_w = _weights(_TRAIN_EASY, cfg.families)
    hard_w = _weights(_TRAIN_HARD, cfg.families) or easy_w
    for i in range(n):
        rng = random.Random(_seed(cfg.seed, name, i))
        hard = rng.random() < hard_share
        scene, item = _draw_item(rng, cfg, hard_w if hard else easy_w, hard)
        seen.add((scene.signature(), item.question))
        item_id = f"{name}-{i:05d}"
        png = encode_png(draw(scene))
        if write_images:
            (tmp / "images" / f"{item_id}.png").write_bytes(png)
        prog(name, i + 1, n)
        yield item_id, scene, item, "hard" if hard else "easy", png, rng


def _public_kwargs(cfg: SynthConfig, *, format_errors: bool) -> dict[str, float]:
    return {
        "wrong_answer_share": cfg.public_wrong_answer_share,
        "wrong_caption_share": cfg.public_wrong_caption_share,
        "format_error_share": cfg.public_format_error_share if format_errors else 0.0,
    }


def _write_public(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    for item_id, scene, item, diff, _png, rng in _train_split(cfg, "public", cfg.n_sft_public, cfg.hard_share, seen, tmp, prog):
        resp = public_response(rng, item, scene, cfg.colours, cfg.shapes, **_public_kwargs(cfg, format_errors=True))
        meta = _meta(item_id, item, scene, diff)
        meta.update(response_answer=resp.answer, wrong_answer=resp.wrong_answer,
                    wrong_caption=resp.wrong_caption, format_error=resp.format_error)
        rows.append({"messages": _messages(cfg, _user_text(item), resp.text),
                     "images": [f"images/{item_id}.png"], "meta": meta})
        fam[item.family] += 1
    return write_sft_json(tmp / SFT_PUBLIC, rows), fam


def _write_teacher(cfg, tmp, seen, prog, *, split: str = "teacher", n: int | None = None,
                   fname: str = SFT_TEACHER) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    n = cfg.n_teacher if n is None else n
    for item_id, scene, item, diff, _png, _rng in _train_split(cfg, split, n, cfg.teacher_hard_share, seen, tmp, prog):
        text = teacher_response(item, scene, cfg.colours, cfg.shapes)
        rows.append({"messages": _messages(cfg, _user_text(item), text),
                     "images": [f"images/{item_id}.png"], "meta": _meta(item_id, item, scene, diff)})
        fam[item.family] += 1
    return write_sft_json(tmp / fname, rows), fam


def _write_heldout(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    """Teacher rows of items no training file has (``seen``): the drift measurements' held-out set."""
    return _write_teacher(cfg, tmp, seen, prog, split="heldout", n=cfg.n_heldout, fname=SFT_HELDOUT)


#: User prompts of the caption split (cycled by row, so every phrasing is seen).
CAPTION_PROMPTS = (
    "Describe the image.",
    "List every shape in the image by colour.",
    "What is in the image?",
)


def _write_caption(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    """Image -> ``<caption>`` block with the dense caption, on scenes of every difficulty."""
    rows, kinds = [], Counter()
    for i in range(cfg.n_caption):
        rng = random.Random(_seed(cfg.seed, "caption", i))
        hard = rng.random() < cfg.hard_share
        scene = random_scene(rng, cfg.image_size, _n_objects(rng, cfg, hard), cfg.colours, cfg.shapes,
                             cfg.min_object_size, cfg.max_object_size)
        item_id = f"caption-{i:05d}"
        (tmp / "images" / f"{item_id}.png").write_bytes(encode_png(draw(scene)))
        prompt = CAPTION_PROMPTS[i % len(CAPTION_PROMPTS)]
        target = f"<caption>\n{teacher_caption(scene, cfg.colours, cfg.shapes)}\n</caption>"
        meta = {"id": item_id, "family": "caption", "difficulty": "hard" if hard else "easy",
                "image_size": scene.size, "scene": scene.to_list()}
        rows.append({"messages": _messages(cfg, "<image>" + prompt, target), "images": [f"images/{item_id}.png"],
                     "meta": meta})
        kinds["caption"] += 1
        prog("caption", i + 1, cfg.n_caption)
    return write_sft_json(tmp / SFT_CAPTION, rows), kinds


def _write_rl(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    split = _train_split(cfg, "rl", cfg.n_rl, cfg.hard_share, seen, tmp, prog, write_images=False)
    for i, (item_id, scene, item, diff, png, _rng) in enumerate(split):
        cap, cot = split_response(teacher_response(item, scene, cfg.colours, cfg.shapes))
        rows.append({
            "data_source": cfg.data_source,
            "prompt": _messages(cfg, _user_text(item), None),
            "images": [{"bytes": png, "path": None}],
            "reward_model": {"ground_truth": item.answer, "equivalent_answers": item.equivalent_answers},
            "extra_info": {
                "index": i, "family": item.family, "split": "train", "item_id": item_id, "difficulty": diff,
                "meta": json.dumps(_meta(item_id, item, scene, diff), sort_keys=True),
            },
            "teacher_caption": cap,
            "teacher_cot": cot,
        })
        fam[item.family] += 1
    return write_rl_parquet(tmp / RL_TRAIN, rows), fam


def _write_warmup(cfg, tmp, seen, prog) -> tuple[int, Counter]:
    rows, fam = [], Counter()
    for item_id, scene, item, diff, _png, rng in _train_split(cfg, "warmup", cfg.n_warmup, cfg.hard_share, seen, tmp, prog):
        t_cap, t_cot = split_response(teacher_response(item, scene, cfg.colours, cfg.shapes))
        resp = public_response(rng, item, scene, cfg.colours, cfg.shapes, **_public_kwargs(cfg, format_errors=False))
        s_cap, s_cot = split_response(resp.text)
        rows.append({
            "prompt": item.question, "image": f"images/{item_id}.png",
            "teacher_caption": t_cap, "student_caption": s_cap, "teacher_cot": t_cot, "student_cot": s_cot,
            "id": item_id, "family": item.family,
        })
        fam[item.family] += 1
    return write_warmup_jsonl(tmp / WARMUP, rows), fam


_MCQ_COLUMNS = ["index", "image", "question", "answer", "A", "B", "C", "D", "category", "l2-category",
                "answer_type", "meta"]
_HALLUSION_COLUMNS = ["index", "image", "question", "answer", "category", "l2-category", "set_id", "figure_id",
                      "question_id", "answer_type", "meta"]


def _bench_rows(cfg: SynthConfig, name: str, weights: dict[str, int], seen: set, prog: _Progress) -> list[dict]:
    rows = []
    for i in range(cfg.n_bench):
        rng = random.Random(_seed(cfg.seed, "bench", name, i))
        hard = rng.random() < cfg.bench_hard_share
        scene, item = _draw_item(rng, cfg, weights, hard, forbid=seen)
        row = {
            "index": i, "image": png_to_base64(encode_png(draw(scene))), "question": item.stem,
            "answer": item.answer, "category": item.family, "l2-category": "hard" if hard else "easy",
            "answer_type": item.answer_type,
            "meta": json.dumps(_meta(f"{name}-{i:05d}", item, scene, "hard" if hard else "easy"), sort_keys=True),
        }
        row.update(item.options)
        rows.append(row)
        prog(name, i + 1, cfg.n_bench)
    return rows


def _hallusion_rows(cfg: SynthConfig, seen: set, prog: _Progress) -> list[dict]:
    """HallusionBench-style sets: figure 0 = a scene, figure 1 = the same scene edited so both answers flip.

    Question 0 asks about a present kind (removed in figure 1), question 1 about an absent kind (added in
    figure 1): per set 2 Yes and 2 No. Index ``VD_presence_<row>_<set>_<figure>_<question>`` so that
    VLMEvalKit's Hallusion_rating reads set/figure/question ids from ``index.split('_')[3:6]``.
    """
    n_sets = math.ceil(cfg.n_bench / 4)
    rows: list[dict] = []
    for s in range(n_sets):
        rng = random.Random(_seed(cfg.seed, "bench", "synth-hallusion", s))
        hard = rng.random() < cfg.bench_hard_share
        for _ in range(500):
            n = _n_objects(rng, cfg, hard)
            base = random_scene(rng, cfg.image_size, n, cfg.colours, cfg.shapes, cfg.min_object_size, cfg.max_object_size)
            present = sorted({(o.colour, o.shape) for o in base.objects})
            absent = [(c, sh) for c in cfg.colours for sh in cfg.shapes if (c, sh) not in present]
            if not present or not absent:
                continue
            p = rng.choice(present)
            q = rng.choice(absent)
            edited = Scene(base.size, tuple(o for o in base.objects if (o.colour, o.shape) != p))
            new = place_object(rng, edited, q[0], q[1], cfg.min_object_size, cfg.max_object_size)
            if new is None:
                continue
            edited = edited.with_object(new)
            figs = [base, edited]
            items = [
                [make_item(rng, f, "presence", [d[0]], [d[1]], hard=True, target=(f.count(*d) > 0)) for d in (p, q)]
                for f in figs
            ]
            if any(it is None for pair in items for it in pair):
                continue
            if any((f.signature(), it.question) in seen for f, pair in zip(figs, items) for it in pair):
                continue
            break
        else:  # pragma: no cover - needs >= 2 kinds of shapes, guaranteed by the config validation
            raise ConfigError("synth config: could not build synth-hallusion sets; use more colours or shapes")
        for fig_id, (f, pair) in enumerate(zip(figs, items)):
            b64 = png_to_base64(encode_png(draw(f)))
            for q_id, item in enumerate(pair):
                row_no = len(rows)
                rows.append({
                    "index": f"VD_presence_{row_no}_{s}_{fig_id}_{q_id}", "image": b64, "question": item.stem,
                    "answer": item.answer, "category": "VD", "l2-category": "presence",
                    "set_id": s, "figure_id": fig_id, "question_id": q_id, "answer_type": "yesno",
                    "meta": json.dumps(_meta(f"hallusion-{row_no:05d}", item, f, "hard" if hard else "easy"),
                                       sort_keys=True),
                })
        prog("synth-hallusion", min(len(rows), 4 * n_sets), 4 * n_sets)
    return rows


# ------------------------------------------------------------------------------------------ output
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


def generate(
    cfg: SynthConfig | Mapping[str, Any],
    out_dir: str | Path,
    *,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate every dataset into ``out_dir`` (atomically) and return the manifest.

    The same config gives byte-identical files. An existing non-empty ``out_dir`` is an error unless
    ``overwrite=True``. Bad options raise ConfigError naming the field.
    """
    cfg = _validated(cfg)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"synth output {out_dir}: exists and is not a directory")
    if _is_nonempty_dir(out_dir) and not overwrite:
        raise ConfigError(f"synth output {out_dir}: directory exists and is not empty (pass overwrite=True to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / BENCH_DIR).mkdir()
        prog = _Progress(progress)
        seen: set = set()
        rows: dict[str, int] = {}
        families: dict[str, dict[str, int]] = {}
        writers = [(SFT_PUBLIC, _write_public), (SFT_TEACHER, _write_teacher)]
        if cfg.n_caption:
            writers.append((SFT_CAPTION, _write_caption))
        if cfg.n_heldout:
            writers.append((SFT_HELDOUT, _write_heldout))
        for fname, fn in (*writers, (RL_TRAIN, _write_rl), (WARMUP, _write_warmup)):
            rows[fname], fam = fn(cfg, tmp, seen, prog)
            families[fname] = dict(sorted(fam.items()))
        if cfg.n_text:
            rel = f"{BENCH_DIR}/{TEXT_TASK_FILE}"
            rows[rel] = write_text_task(tmp / rel, cfg.seed, cfg.n_text, cfg.colours, cfg.shapes)
        bench_rows = {
            "synth-perception": _bench_rows(cfg, "synth-perception", _PERCEPTION, seen, prog),
            "synth-reasoning": _bench_rows(cfg, "synth-reasoning", _REASONING, seen, prog),
            "synth-hallusion": _hallusion_rows(cfg, seen, prog),
        }
        for name, brows in bench_rows.items():
            rel = f"{BENCH_DIR}/{name}.tsv"
            cols = _HALLUSION_COLUMNS if name == "synth-hallusion" else _MCQ_COLUMNS
            rows[rel] = write_benchmark_tsv(tmp / rel, brows, cols)
            families[rel] = dict(sorted(Counter(str(r["category"]) for r in brows).items()))

        files = {rel: {"sha256": _sha256(tmp / rel), "rows": n} for rel, n in sorted(rows.items())}
        img_hash = hashlib.sha256()
        images = sorted((tmp / "images").iterdir())
        for p in images:
            img_hash.update(p.name.encode() + b"\0" + _sha256(p).encode() + b"\n")
        fp = hashlib.sha256()
        for rel, info in files.items():
            fp.update(f"{rel}:{info['sha256']}\n".encode())
        fp.update(img_hash.hexdigest().encode())
        manifest = {
            "generator": "prism_lab.data.synth.generate",
            "generator_version": GENERATOR_VERSION,
            "config": cfg.model_dump(mode="json"),
            "files": files,
            "images": {"dir": "images", "count": len(images), "sha256": img_hash.hexdigest()},
            "families": families,
            "benchmarks": {name: f"{BENCH_DIR}/{name}.tsv" for name in BENCHMARKS},
            "fingerprint": fp.hexdigest(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n", encoding="utf-8")

        if out_dir.exists():
            if _is_nonempty_dir(out_dir):
                if not overwrite:
                    raise ConfigError(f"synth output {out_dir}: directory appeared during generation")
                old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                out_dir.rmdir()
                os.replace(tmp, out_dir)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def load_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The manifest of a generated data directory."""
    from prism_lab.errors import DataError

    p = Path(data_dir) / MANIFEST
    if not p.is_file():
        raise DataError(f"{p}: not found (is {data_dir} a generated synth data directory?)")
    return json.loads(p.read_text(encoding="utf-8"))


def corpus_texts(data_dir: str | Path) -> Iterator[str]:
    """Every system/question/response text in a generated directory (for training the tokenizer).

    ``<image>`` placeholders are removed (the processor replaces them with vision tokens). The system
    prompt is yielded once (always, since evaluation injects it by default).
    """
    import pandas as pd
    import pyarrow.parquet as pq

    from prism_lab.data.synth.questions import format_mcq

    d = Path(data_dir)
    seen_system = {SYSTEM_PROMPT}
    yield SYSTEM_PROMPT

    def clean(t: str) -> str:
        return t.replace("<image>", "")

    def system_once(t: str) -> Iterator[str]:
        if t not in seen_system:
            seen_system.add(t)
            yield t

    for name in (SFT_PUBLIC, SFT_TEACHER, SFT_CAPTION):
        p = d / name
        if p.is_file():
            for row in json.loads(p.read_text(encoding="utf-8")):
                for m in row["messages"]:
                    if m["role"] == "system":
                        yield from system_once(m["content"])
                    else:
                        yield clean(m["content"])
    p = d / RL_TRAIN
    if p.is_file():
        t = pq.read_table(p, columns=["prompt", "teacher_caption", "teacher_cot"]).to_pylist()
        for row in t:
            for m in row["prompt"]:
                if m["role"] == "system":
                    yield from system_once(m["content"])
                else:
                    yield clean(m["content"])
            for k in ("teacher_caption", "teacher_cot"):
                if row.get(k):
                    yield row[k]
    p = d / WARMUP
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                for k in ("prompt", "teacher_caption", "student_caption", "teacher_cot", "student_cot"):
                    if obj.get(k):
                        yield obj[k]
    for name in BENCHMARKS:
        p = d / BENCH_DIR / f"{name}.tsv"
        if p.is_file():
            cols = ["question", "answer", "A", "B", "C", "D"]
            df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False,
                             usecols=lambda c: c in cols)
            for rec in df.to_dict(orient="records"):
                opts = {k: rec[k] for k in "ABCD" if rec.get(k)}
                yield format_mcq(rec["question"], opts)
                yield rec["answer"]
