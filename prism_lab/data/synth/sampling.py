"""Drawing one synthetic item: a stable seed per (config seed, split, row), the question family by weight,
the number of objects by difficulty, a scene with a question about it; and the chat messages and metadata
every file stores with it."""

from __future__ import annotations

import math
import random
import sys
from typing import Any

from prism_lab.data.synth.config import SynthConfig
from prism_lab.data.synth.questions import Item, make_item
from prism_lab.data.synth.scenes import Scene, random_scene
from prism_lab.prompts import SYSTEM_PROMPT


def family_weights(table: dict[str, int], allowed: list[str] | None) -> dict[str, int]:
    w = {k: v for k, v in table.items() if v > 0 and (allowed is None or k in allowed)}
    return w


def choose_family(rng: random.Random, w: dict[str, int]) -> str:
    keys = list(w)
    return rng.choices(keys, weights=[w[k] for k in keys], k=1)[0]


def n_objects(rng: random.Random, cfg: SynthConfig, hard: bool) -> int:
    mid = max(cfg.min_objects, math.ceil(cfg.max_objects / 2))
    if hard:
        return rng.randint(min(mid + 1, cfg.max_objects), cfg.max_objects)
    return rng.randint(cfg.min_objects, mid)


def draw_item(
    rng: random.Random,
    cfg: SynthConfig,
    weights: dict[str, int],
    hard: bool,
    forbid: set | None = None,
) -> tuple[Scene, Item]:
    for _ in range(200):
        scene = random_scene(
            rng, cfg.image_size, n_objects(rng, cfg, hard), cfg.colours, cfg.shapes,
            cfg.min_object_size, cfg.max_object_size,
        )
        if not scene.objects:
            continue
        item = make_item(rng, scene, choose_family(rng, weights), cfg.colours, cfg.shapes, hard=hard)
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


def item_meta(item_id: str, item: Item, scene: Scene, difficulty: str) -> dict[str, Any]:
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


def user_text(item: Item) -> str:
    return "<image>" + item.question


def chat_messages(cfg: SynthConfig, user: str, assistant: str | None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if cfg.include_system_prompt else []
    msgs.append({"role": "user", "content": user})
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return msgs


class Progress:
    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, what: str, done: int, total: int) -> None:
        if self.on and (done == total or done % 200 == 0):
            print(f"\rsynth: {what} {done}/{total}", end="\n" if done == total else "", file=sys.stderr, flush=True)
