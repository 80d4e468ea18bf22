"""The two response styles of the synthetic task: the teacher's (dense caption, step-by-step reasoning,
the right answer) and the public mixture's (terse or partial caption, terse reasoning, sometimes a wrong
answer or a format break)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from prism_lab.data.synth.describe import desc_text, teacher_caption
from prism_lab.data.synth.questions import Item, option_check
from prism_lab.data.synth.scenes import Scene, plural
from prism_lab.prompts import format_cot, format_response


def teacher_segments(item: Item, scene: Scene, colours: Sequence[str], shapes: Sequence[str]) -> tuple[str, str]:
    """(caption block with tags, cot = think block + answer block) of the teacher response."""
    full = format_response(teacher_caption(scene, colours, shapes), item.teacher_think, item.answer)
    return split_response(full)


def teacher_response(item: Item, scene: Scene, colours: Sequence[str], shapes: Sequence[str]) -> str:
    return format_response(teacher_caption(scene, colours, shapes), item.teacher_think, item.answer)


def split_response(text: str) -> tuple[str, str]:
    from prism_lab.prompts import SPLIT_RE

    m = SPLIT_RE.match(text)
    if m is None:  # pragma: no cover - callers pass format-valid text
        raise ValueError("response does not follow the caption/think/answer format")
    return m.group(1), m.group(2)


def wrong_answer(rng: random.Random, item: Item) -> str:
    """A plausible wrong answer of the right type."""
    if item.answer_type == "yesno":
        return "No" if item.answer == "Yes" else "Yes"
    if item.answer_type == "letter":
        return rng.choice([k for k in item.options if k != item.answer])
    n = int(item.answer)
    cands = [n + d for d in (-2, -1, 1, 2) if n + d >= 0]
    return str(rng.choice(cands))


def _presence_count(item: Item, scene: Scene, answer: str) -> int:
    """The count a presence answer rests on: the true one when the answer is right, else 0 for a wrong No and 1
    for a wrong Yes."""
    true_n = scene.count(*item.meta["desc"])
    if (true_n > 0) == (answer == "Yes"):
        return true_n
    return 1 if answer == "Yes" else 0


@dataclass
class PublicResponse:
    text: str
    answer: str
    wrong_answer: bool
    wrong_caption: bool
    format_error: bool


def _public_caption(rng: random.Random, scene: Scene, colours, shapes, wrong: bool) -> str:
    groups = scene.groups(colours, shapes)
    total = len(scene.objects)
    style = rng.choice(("total", "colours", "partial", "vague")) if not wrong else rng.choice(("total", "partial"))
    if style == "total" or not groups:
        n = total + (rng.choice((-1, 1)) if wrong and total > 1 else (1 if wrong else 0))
        return f"- {n} shapes"
    if style == "colours":
        present = [c for c in colours if scene.count(c, None)]
        return f"- {', '.join(present)} shapes"
    if style == "partial":
        c, s, n = rng.choice(groups)
        if wrong:
            n = n + 1 if n == 1 or rng.random() < 0.5 else n - 1
        return f"- {n} {c} {plural(s) if n != 1 else s}"
    return "- shapes on white"


def _public_think(item: Item, scene: Scene, answer: str, wrong: bool) -> str:
    fam = item.family
    if fam in ("count",):
        return f"I see {answer}."
    if fam == "presence":  # the count of the asked kind, not `I think no.` (docs/cpu_notes.md §12)
        return f"{desc_text(tuple(item.meta['desc']))} = {_presence_count(item, scene, answer)}"
    if fam.startswith("mcq_"):  # the teacher's option check without the line that finds the value (docs/cpu_notes.md §11)
        return option_check(item.options, answer)
    if not wrong:
        return item.teacher_think.splitlines()[-1]
    return f"so {answer}"


def public_response(
    rng: random.Random,
    item: Item,
    scene: Scene,
    colours: Sequence[str],
    shapes: Sequence[str],
    *,
    wrong_answer_share: float,
    wrong_caption_share: float,
    format_error_share: float,
) -> PublicResponse:
    """Lower-fidelity response: terse or partial caption, terse reasoning, sometimes a wrong answer."""
    wrong = rng.random() < wrong_answer_share
    wrong_cap = rng.random() < wrong_caption_share
    bad_format = rng.random() < format_error_share
    answer = wrong_answer(rng, item) if wrong else item.answer
    caption = _public_caption(rng, scene, colours, shapes, wrong_cap)
    think = _public_think(item, scene, answer, wrong)
    if bad_format:
        if rng.random() < 0.5:
            text = format_cot(think, answer)
        else:
            text = answer
    else:
        text = format_response(caption, think, answer)
    return PublicResponse(text, answer, wrong, wrong_cap, bad_format)
