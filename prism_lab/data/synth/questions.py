"""Question families over a scene (the response styles are in ``responses``, scene descriptions in ``describe``).

Families (each generated item records its family and a sub-form):

- ``count``: "How many red circles are there?" (colour and/or shape) -> integer
- ``presence``: "Is there a blue triangle?" -> Yes/No
- ``mcq_count``: counting with four numeric options -> letter
- ``mcq_most``: "Which colour has the most shapes?" -> letter
- ``mcq_colour``: "What colour is the square?" (exactly one square) -> letter
- ``mcq_shape``: "What shape is the red one?" (exactly one red object) -> letter
- ``arith``: arithmetic over perceived counts, 1 to 3 steps ("How many red shapes plus twice the
  blue circles?") -> integer

Every answer is an integer, a letter A-D or Yes/No, so the rule judge can check it. ``meta`` holds what
is needed to re-derive the answer from the scene (see ``derive_answer``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prism_lab.data.synth.describe import (
    Desc,
    article,
    derive_count_line,
    desc_singular,
    desc_text,
)
from prism_lab.data.synth.scenes import PALETTE, SHAPES, Scene

FAMILIES: tuple[str, ...] = ("count", "presence", "mcq_count", "mcq_most", "mcq_colour", "mcq_shape", "arith")
LETTERS = "ABCD"



@dataclass
class Item:
    """One question about one scene, with its checkable answer and the teacher's reasoning."""

    family: str
    form: str
    stem: str  # question text without options
    options: dict[str, str]  # {} for open questions
    answer: str
    answer_type: str  # "integer" | "letter" | "yesno"
    teacher_think: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        """The full user text: the stem, plus the options for MCQ items."""
        return format_mcq(self.stem, self.options)

    @property
    def equivalent_answers(self) -> list[str]:
        if self.answer_type == "letter":
            return [self.answer, f"{self.answer}. {self.options[self.answer]}"]
        if self.answer_type == "yesno":
            return [self.answer, self.answer.lower()]
        return [self.answer]


def format_mcq(stem: str, options: dict[str, str]) -> str:
    """The prompt text of an item: used by the generator and by the benchmark prompt builder alike."""
    if not options:
        return stem
    lines = [stem] + [f"{k}. {v}" for k, v in options.items()]
    return "\n".join(lines) + "\nAnswer with the letter."


# ------------------------------------------------------------------------------------------ families
def _random_desc(rng: random.Random, colours: Sequence[str], shapes: Sequence[str], *, hard: bool) -> Desc:
    r = rng.random()
    if hard:
        if r < 0.6:
            return rng.choice(list(colours)), rng.choice(list(shapes))
        if r < 0.85:
            return rng.choice(list(colours)), None
        return None, rng.choice(list(shapes))
    if r < 0.4:
        return rng.choice(list(colours)), None
    if r < 0.7:
        return rng.choice(list(colours)), rng.choice(list(shapes))
    if r < 0.9:
        return None, rng.choice(list(shapes))
    return None, None


def _disjoint(a: Desc, b: Desc) -> bool:
    if a[0] and b[0] and a[0] != b[0]:
        return True
    return bool(a[0] == b[0] and a[0] and a[1] and b[1] and a[1] != b[1])


def _letter_options(
    rng: random.Random, truth: str, primary: Sequence[str], extra: Sequence[str] = (), n: int = 4
) -> tuple[dict[str, str], str]:
    """Options: ``truth`` plus distractors, preferring ``primary`` (drawn kinds) over ``extra`` (never drawn),
    shuffled; returns (options, answer letter)."""
    first = [p for p in primary if p != truth]
    rest = [p for p in extra if p != truth and p not in first]
    rng.shuffle(first)
    rng.shuffle(rest)
    choices = [truth] + (first + rest)[: n - 1]
    rng.shuffle(choices)
    options = {LETTERS[i]: v for i, v in enumerate(choices)}
    letter = next(k for k, v in options.items() if v == truth)
    return options, letter


def option_check(options: dict[str, str], letter: str) -> str:
    """The options in order up to the right one, each checked against the value found, then the letter:
    ``A. blue: no / B. red: yes / so B``. The letter is then the one opening the line just written: a tiny
    language model learns that, where finding a value's letter among the question's options it did not
    (docs/cpu_notes.md §9)."""
    lines = []
    for k, v in options.items():
        lines.append(f"{k}. {v}: {'yes' if k == letter else 'no'}")
        if k == letter:
            break
    return "\n".join(lines) + f"\nso {letter}"


def _extra_colours(colours: Sequence[str]) -> list[str]:
    """Palette colours that are never drawn (so never the answer)."""
    return [c for c in PALETTE if c not in colours]


#: Share of counting questions asked about a kind the scene has. Descriptions drawn blindly are absent more often
#: than not, and "0" would be the answer of over half the items: a constant answer would score that much.
PRESENT_COUNT_SHARE = 0.75


def _count_desc(rng: random.Random, scene: Scene, colours, shapes, hard: bool) -> Desc:
    """A description to count: one the scene has with probability PRESENT_COUNT_SHARE (when one is drawn in 20
    tries), else any."""
    d = _random_desc(rng, colours, shapes, hard=hard)
    if rng.random() < PRESENT_COUNT_SHARE:
        for _ in range(20):
            if scene.count(*d) > 0:
                break
            d = _random_desc(rng, colours, shapes, hard=hard)
    return d


def _make_count(rng, scene, colours, shapes, hard) -> Item:
    d = _count_desc(rng, scene, colours, shapes, hard)
    line, n = derive_count_line(scene, d, colours, shapes)
    return Item("count", "count", f"How many {desc_text(d)} are there?", {}, str(n), "integer", line,
                {"terms": [[1, d[0], d[1]]], "k": 0})


def _make_presence(rng, scene, colours, shapes, hard, *, target: bool | None = None) -> Item | None:
    want = rng.random() < 0.5 if target is None else target
    r = rng.random()
    kinds = ["cs"] * 7 + ["c"] * 2 + ["s"] if not hard else ["cs"]
    kind = kinds[int(r * len(kinds))]
    cands: list[Desc] = []
    if kind == "cs":
        cands = [(c, s) for c in colours for s in shapes]
    elif kind == "c":
        cands = [(c, None) for c in colours]
    else:
        cands = [(None, s) for s in shapes]
    cands = [d for d in cands if (scene.count(*d) > 0) == want]
    if not cands:
        return None
    d = rng.choice(cands)
    n = scene.count(*d)
    ans = "Yes" if n else "No"
    think = f"{desc_text(d)} = {n}\nso {ans}"
    return Item("presence", kind, f"Is there {desc_singular(d)}?", {}, ans, "yesno", think,
                {"desc": [d[0], d[1]]})


def _make_mcq_count(rng, scene, colours, shapes, hard) -> Item:
    d = _count_desc(rng, scene, colours, shapes, hard)
    line, n = derive_count_line(scene, d, colours, shapes)
    # three distractors near the count, shuffled with it: every letter is the answer equally often (consecutive
    # options from max(0, n - k) made "A" the answer of most small counts)
    near = [v for v in range(max(0, n - 3), n + 4) if v != n]
    values = [str(v) for v in [n, *rng.sample(near, 3)]]
    rng.shuffle(values)
    options = {LETTERS[i]: v for i, v in enumerate(values)}
    letter = LETTERS[values.index(str(n))]
    return Item("mcq_count", "count", f"How many {desc_text(d)} are there?", options, letter, "letter",
                f"{line}\n{option_check(options, letter)}", {"terms": [[1, d[0], d[1]]], "k": 0})


def _make_mcq_most(rng, scene, colours, shapes, hard) -> Item | None:
    if len(colours) < 2:
        return None
    counts = [(c, scene.count(c, None)) for c in colours]
    best = max(n for _, n in counts)
    winners = [c for c, n in counts if n == best]
    if best == 0 or len(winners) != 1:
        return None
    options, letter = _letter_options(rng, winners[0], colours, _extra_colours(colours))
    listing = ", ".join(f"{c} {n}" for c, n in counts)
    think = f"{listing}\nmost is {winners[0]}\n{option_check(options, letter)}"
    return Item("mcq_most", "colour", "Which colour has the most shapes?", options, letter, "letter", think,
                {"colour": winners[0]})


def _make_mcq_colour(rng, scene, colours, shapes, hard) -> Item | None:
    singles = [s for s in shapes if scene.count(None, s) == 1]
    if not singles:
        return None
    s = rng.choice(singles)
    colour = next(o.colour for o in scene.objects if o.shape == s)
    options, letter = _letter_options(rng, colour, colours, _extra_colours(colours))
    if len(options) < 2:
        return None
    return Item("mcq_colour", "colour", f"What colour is the {s}?", options, letter, "letter",
                f"the {s} is {colour}\n{option_check(options, letter)}", {"shape": s, "colour": colour})


def _make_mcq_shape(rng, scene, colours, shapes, hard) -> Item | None:
    singles = [c for c in colours if scene.count(c, None) == 1]
    if not singles:
        return None
    c = rng.choice(singles)
    shape = next(o.shape for o in scene.objects if o.colour == c)
    options, letter = _letter_options(rng, shape, shapes, [s for s in SHAPES if s not in shapes])
    if len(options) < 2:
        return None
    return Item("mcq_shape", "shape", f"What shape is the {c} one?", options, letter, "letter",
                f"the {c} one is {article(shape)} {shape}\n{option_check(options, letter)}",
                {"colour": c, "shape": shape})


_EASY_ARITH = ("add_k", "add_k", "sum")
_HARD_ARITH = ("sum", "twice", "diff", "sum_k", "twice")


def _make_arith(rng, scene, colours, shapes, hard, *, form: str | None = None) -> Item | None:
    form = form or rng.choice(_HARD_ARITH if hard else _EASY_ARITH)
    a = _random_desc(rng, colours, shapes, hard=True)
    if a == (None, None):
        a = (rng.choice(list(colours)), None)
    la, na = derive_count_line(scene, a, colours, shapes)
    if form == "add_k":
        k = rng.randint(1, 9)
        think = f"{la}\n{na} + {k} = {na + k}"
        return Item("arith", form, f"How many {desc_text(a)} are there? Add {k}.", {}, str(na + k), "integer",
                    think, {"terms": [[1, a[0], a[1]]], "k": k})
    b = None
    for _ in range(20):
        cand = (rng.choice(list(colours)), rng.choice([None, *shapes]))
        if _disjoint(a, cand):
            b = cand
            break
    if b is None:
        return None
    lb, nb = derive_count_line(scene, b, colours, shapes)
    if form == "diff":
        if na < nb:
            a, b, la, lb, na, nb = b, a, lb, la, nb, na
        r = na - nb
        q = f"How many more {desc_text(a)} than {desc_text(b)}?"
        return Item("arith", form, q, {}, str(r), "integer", f"{la}\n{lb}\n{na} - {nb} = {r}",
                    {"terms": [[1, a[0], a[1]], [-1, b[0], b[1]]], "k": 0})
    if form == "twice":
        r = na + 2 * nb
        q = f"How many {desc_text(a)} plus twice the {desc_text(b)}?"
        return Item("arith", form, q, {}, str(r), "integer", f"{la}\n{lb}\n{na} + 2*{nb} = {r}",
                    {"terms": [[1, a[0], a[1]], [2, b[0], b[1]]], "k": 0})
    k = rng.randint(1, 9) if form == "sum_k" else 0
    r = na + nb + k
    q = f"How many {desc_text(a)} plus {desc_text(b)}?" + (f" Add {k}." if k else "")
    expr = f"{na} + {nb}" + (f" + {k}" if k else "")
    return Item("arith", form, q, {}, str(r), "integer", f"{la}\n{lb}\n{expr} = {r}",
                {"terms": [[1, a[0], a[1]], [1, b[0], b[1]]], "k": k})


_MAKERS = {
    "count": _make_count,
    "presence": _make_presence,
    "mcq_count": _make_mcq_count,
    "mcq_most": _make_mcq_most,
    "mcq_colour": _make_mcq_colour,
    "mcq_shape": _make_mcq_shape,
    "arith": _make_arith,
}


def make_item(
    rng: random.Random,
    scene: Scene,
    family: str,
    colours: Sequence[str],
    shapes: Sequence[str],
    *,
    hard: bool = False,
    **kw: Any,
) -> Item | None:
    """An item of ``family`` about ``scene``, or None when the scene does not support it."""
    return _MAKERS[family](rng, scene, colours, shapes, hard, **kw)


def derive_answer(item_meta: dict[str, Any], family: str, scene: Scene) -> str:
    """Recompute an item's answer from its metadata and the scene alone (consistency checks/tests)."""
    if family in ("count", "arith", "mcq_count"):
        val = sum(coef * scene.count(c, s) for coef, c, s in item_meta["terms"]) + item_meta.get("k", 0)
        return str(val)
    if family == "presence":
        c, s = item_meta["desc"]
        return "Yes" if scene.count(c, s) else "No"
    if family == "mcq_most":
        counts: dict[str, int] = {}
        for o in scene.objects:
            counts[o.colour] = counts.get(o.colour, 0) + 1
        best = max(counts.values())
        winners = [c for c, n in counts.items() if n == best]
        return winners[0] if len(winners) == 1 else "tie"
    if family == "mcq_colour":
        return next(o.colour for o in scene.objects if o.shape == item_meta["shape"])
    if family == "mcq_shape":
        return next(o.shape for o in scene.objects if o.colour == item_meta["colour"])
    raise KeyError(family)
