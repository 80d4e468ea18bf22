"""How scenes are put in words: an object description ('red circles', 'a red circle'), the dense
teacher caption (every object grouped by colour, then shape), and a one-line count derivation."""

from __future__ import annotations

from collections.abc import Sequence

from prism_lab.data.synth.scenes import Scene, plural

Desc = tuple[str | None, str | None]  # (colour, shape); None = any


def desc_text(d: Desc) -> str:
    """(red, circle) -> 'red circles'; (red, None) -> 'red shapes'; (None, None) -> 'shapes'."""
    colour, shape = d
    noun = plural(shape) if shape else "shapes"
    return f"{colour} {noun}" if colour else noun


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def desc_singular(d: Desc) -> str:
    colour, shape = d
    noun = shape or "shape"
    phrase = f"{colour} {noun}" if colour else noun
    return f"{article(phrase)} {phrase}"


def derive_count_line(scene: Scene, d: Desc, colours: Sequence[str], shapes: Sequence[str]) -> tuple[str, int]:
    """A one-line count derivation ('red shapes = 1 + 2 = 3') and the count."""
    colour, shape = d
    if colour and shape:
        parts = [scene.count(colour, shape)]
    elif colour:
        parts = [scene.count(colour, s) for s in shapes]
    elif shape:
        parts = [scene.count(c, shape) for c in colours]
    else:
        parts = [scene.count(c, None) for c in colours]
    parts = [p for p in parts if p] or [0]
    total = sum(parts)
    if len(parts) == 1:
        return f"{desc_text(d)} = {total}", total
    return f"{desc_text(d)} = {' + '.join(map(str, parts))} = {total}", total


def teacher_caption_lines(scene: Scene, colours: Sequence[str], shapes: Sequence[str]) -> list[str]:
    """Dense caption: every object, grouped by colour then shape, with counts."""
    lines = []
    for c in colours:
        parts = []
        for s in shapes:
            n = scene.count(c, s)
            if n:
                parts.append(f"{n} {plural(s) if n > 1 else s}")
        if parts:
            lines.append(f"- {c}: {', '.join(parts)}")
    return lines or ["- no shapes"]


def teacher_caption(scene: Scene, colours: Sequence[str], shapes: Sequence[str]) -> str:
    return "\n".join(teacher_caption_lines(scene, colours, shapes))
