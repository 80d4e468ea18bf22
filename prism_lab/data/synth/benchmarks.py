"""The held-out benchmarks of the synthetic task, as VLMEvalKit TSV rows: synth-perception and
synth-reasoning (multiple choice and open questions), and synth-hallusion (HallusionBench-style
figure pairs). No (image, question) pair of a benchmark is in the training files."""

from __future__ import annotations

import json
import math
import random

from prism_lab.data.images import encode_png, png_to_base64
from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.questions import make_item
from prism_lab.data.synth.sampling import (
    Progress,
    draw_item,
    item_meta,
    n_objects,
)
from prism_lab.data.synth.scenes import Scene, draw, place_object, random_scene
from prism_lab.errors import ConfigError
from prism_lab.seeds import derive_seed

PERCEPTION_FAMILIES = {"count": 3, "mcq_count": 2, "mcq_most": 1, "mcq_colour": 1, "mcq_shape": 1}
REASONING_FAMILIES = {"arith": 1}

MCQ_COLUMNS = ["index", "image", "question", "answer", "A", "B", "C", "D", "category", "l2-category",
                "answer_type", "meta"]
HALLUSION_COLUMNS = ["index", "image", "question", "answer", "category", "l2-category", "set_id", "figure_id",
                      "question_id", "answer_type", "meta"]


def bench_rows(cfg: SynthConfig, name: str, weights: dict[str, int], seen: set, prog: Progress) -> list[dict]:
    rows = []
    for i in range(cfg.n_bench):
        rng = random.Random(derive_seed(cfg.seed, f"bench:{name}", i))
        hard = rng.random() < cfg.bench_hard_share
        scene, item = draw_item(rng, cfg, weights, hard, forbid=seen)
        row = {
            "index": i, "image": png_to_base64(encode_png(draw(scene))), "question": item.stem,
            "answer": item.answer, "category": item.family, "l2-category": "hard" if hard else "easy",
            "answer_type": item.answer_type,
            "meta": json.dumps(item_meta(f"{name}-{i:05d}", item, scene, "hard" if hard else "easy"), sort_keys=True),
        }
        row.update(item.options)
        rows.append(row)
        prog(name, i + 1, cfg.n_bench)
    return rows


def hallusion_rows(cfg: SynthConfig, seen: set, prog: Progress) -> list[dict]:
    """HallusionBench-style sets: figure 0 = a scene, figure 1 = the same scene edited so both answers flip.

    Question 0 asks about a present kind (removed in figure 1), question 1 about an absent kind (added in
    figure 1): per set 2 Yes and 2 No. Index ``VD_presence_<row>_<set>_<figure>_<question>`` so that
    VLMEvalKit's Hallusion_rating reads set/figure/question ids from ``index.split('_')[3:6]``.
    """
    n_sets = math.ceil(cfg.n_bench / 4)
    rows: list[dict] = []
    for s in range(n_sets):
        rng = random.Random(derive_seed(cfg.seed, "bench:synth-hallusion", s))
        hard = rng.random() < cfg.bench_hard_share
        for _ in range(500):
            n = n_objects(rng, cfg, hard)
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
                    "meta": json.dumps(item_meta(f"hallusion-{row_no:05d}", item, f, "hard" if hard else "easy"),
                                       sort_keys=True),
                })
        prog("synth-hallusion", min(len(rows), 4 * n_sets), 4 * n_sets)
    return rows
