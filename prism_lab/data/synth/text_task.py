"""The synthetic text-retention task: text-only questions with no image, run through lm-eval.

Each line of ``bench/synth-text.jsonl`` is a four-way multiple-choice question that needs no image:
small-number arithmetic in the words of the task ("3 red circles and 4 blue squares: how many
shapes?") and plain arithmetic ("What is 7 minus 2?"). lm-eval scores it by log-likelihood of each
choice (``benchmarks/lmeval/synth_text.yaml``), so it measures what the language model keeps of a
skill the vision training does not ask for in this form.

Line fields: ``id``, ``family`` (``count_words`` | ``arithmetic``), ``question``, ``choices`` (4 strings),
``label`` (index of the right choice), ``answer`` (its text).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

__all__ = ["TEXT_TASK_FILE", "text_items", "write_text_task"]

TEXT_TASK_FILE = "synth-text.jsonl"

_OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def _choices(rng: random.Random, answer: int) -> tuple[list[str], int]:
    """Four distinct non-negative choices around ``answer``, shuffled; returns (choices, right index)."""
    pool = [answer]
    while len(pool) < 4:
        c = answer + rng.choice([-3, -2, -1, 1, 2, 3])
        if c >= 0 and c not in pool:
            pool.append(c)
    rng.shuffle(pool)
    return [str(c) for c in pool], pool.index(answer)


def _count_words(rng: random.Random, colours: list[str], shapes: list[str]) -> tuple[str, int]:
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    (c1, s1), (c2, s2) = [(rng.choice(colours), rng.choice(shapes)) for _ in range(2)]
    return f"There are {a} {c1} {s1}s and {b} {c2} {s2}s. How many shapes are there in total?", a + b


def _arithmetic(rng: random.Random) -> tuple[str, int]:
    op = rng.choice(sorted(_OPS))
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    if op == "minus" and b > a:
        a, b = b, a
    return f"What is {a} {op} {b}?", _OPS[op](a, b)


def text_items(seed: int, n: int, colours: list[str], shapes: list[str]) -> list[dict[str, Any]]:
    """``n`` questions, alternating families, from a stream derived only from ``seed``."""
    rng = random.Random(f"prism-lab text task {seed}")
    out = []
    for i in range(n):
        family = "count_words" if i % 2 == 0 else "arithmetic"
        question, answer = _count_words(rng, colours, shapes) if family == "count_words" else _arithmetic(rng)
        choices, label = _choices(rng, answer)
        out.append({"id": i, "family": family, "question": question, "choices": choices, "label": label,
                    "answer": str(answer)})
    return out


def write_text_task(path: Path, seed: int, n: int, colours: list[str], shapes: list[str]) -> int:
    """Write the JSONL; returns the number of lines."""
    items = text_items(seed, n, colours, shapes)
    path.write_text("".join(json.dumps(it, sort_keys=True) + "\n" for it in items), encoding="utf-8")
    return len(items)
