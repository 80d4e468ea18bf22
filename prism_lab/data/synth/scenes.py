"""Scenes of coloured shapes on a white background: sampling, drawing and counting.

A scene is a list of non-overlapping objects (colour, shape, centre, size). Objects are placed freely,
so they straddle the vision tower's 16 px patches (docs/cpu_notes.md §5). Everything here is
deterministic given a ``random.Random``; drawing uses PIL only.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


#: Every colour the generator can draw, name -> RGB. Order matters: captions list colours in this order.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 70, 220),
    "yellow": (225, 195, 20),
    "purple": (140, 50, 170),
    "orange": (240, 130, 20),
}

#: Every shape the generator can draw, in caption order.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}


def plural(shape: str) -> str:
    """``circle`` -> ``circles``."""
    return _PLURAL.get(shape, shape + "s")


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: ``size`` is the bounding-box side in pixels, (cx, cy) its centre."""

    colour: str
    shape: str
    cx: int
    cy: int
    size: int

    def bbox(self) -> tuple[int, int, int, int]:
        half = self.size // 2
        x0, y0 = self.cx - half, self.cy - half
        return x0, y0, x0 + self.size - 1, y0 + self.size - 1

    def to_dict(self) -> dict[str, object]:
        return {"colour": self.colour, "shape": self.shape, "cx": self.cx, "cy": self.cy, "size": self.size}


@dataclass(frozen=True)
class Scene:
    """An image specification: side length plus objects. ``count`` answers every counting question."""

    size: int
    objects: tuple[SceneObject, ...]

    def count(self, colour: str | None = None, shape: str | None = None) -> int:
        """Number of objects matching ``colour`` and ``shape`` (None = any)."""
        return sum(
            1
            for o in self.objects
            if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
        )

    def groups(self, colours: Sequence[str], shapes: Sequence[str]) -> list[tuple[str, str, int]]:
        """Non-empty (colour, shape, count) groups in caption order."""
        out = []
        for c in colours:
            for s in shapes:
                n = self.count(c, s)
                if n:
                    out.append((c, s, n))
        return out

    def signature(self) -> tuple:
        """Hashable identity of the drawn image (used to keep benchmarks disjoint from training)."""
        return (self.size, tuple(sorted((o.colour, o.shape, o.cx, o.cy, o.size) for o in self.objects)))

    def to_list(self) -> list[dict[str, object]]:
        return [o.to_dict() for o in self.objects]

    @classmethod
    def from_list(cls, size: int, objects: Iterable[dict]) -> "Scene":
        return cls(size, tuple(SceneObject(**o) for o in objects))

    def without(self, index: int) -> "Scene":
        return Scene(self.size, self.objects[:index] + self.objects[index + 1 :])

    def with_object(self, obj: SceneObject) -> "Scene":
        return Scene(self.size, self.objects + (obj,))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def place_object(
    rng: random.Random,
    scene: Scene,
    colour: str,
    shape: str,
    min_size: int,
    max_size: int,
    *,
    gap: int = 2,
    tries: int = 200,
) -> SceneObject | None:
    """A new object of the given kind placed freely without touching the others, or None if no room."""
    for _ in range(tries):
        size = rng.randint(min_size, max_size)
        half = size // 2
        lo, hi = half + 1, scene.size - (size - half) - 1
        if hi < lo:
            return None
        obj = SceneObject(colour, shape, rng.randint(lo, hi), rng.randint(lo, hi), size)
        box = obj.bbox()
        if all(not _overlaps(box, o.bbox(), gap) for o in scene.objects):
            return obj
    return None


def random_scene(
    rng: random.Random,
    size: int,
    n_objects: int,
    colours: Sequence[str],
    shapes: Sequence[str],
    min_size: int,
    max_size: int,
) -> Scene:
    """Up to ``n_objects`` random objects (fewer only when the image has no room left)."""
    scene = Scene(size, ())
    for _ in range(n_objects):
        obj = place_object(rng, scene, rng.choice(list(colours)), rng.choice(list(shapes)), min_size, max_size)
        if obj is None:
            break
        scene = scene.with_object(obj)
    return scene


def capacity(size: int, max_obj: int, gap: int = 2) -> int:
    """A conservative number of largest objects that always fit (grid packing)."""
    per_side = max(0, (size - 2) // (max_obj + gap))
    return per_side * per_side


def draw(scene: Scene) -> Image.Image:
    """Render a scene as an RGB image (white background, filled shapes, no anti-aliasing)."""
    from PIL import (  # here, not at import: planning validates synth options without PIL
        Image,
        ImageDraw,
    )

    img = Image.new("RGB", (scene.size, scene.size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        x0, y0, x1, y1 = o.bbox()
        fill = PALETTE[o.colour]
        if o.shape == "circle":
            d.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            inset = max(0, o.size // 8)  # a square's area would otherwise dwarf a circle of the same box
            d.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
        elif o.shape == "triangle":
            d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:  # pragma: no cover - validated by SynthConfig
            raise ValueError(f"unknown shape {o.shape!r}")
    return img
