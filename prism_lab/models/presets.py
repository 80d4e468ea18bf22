"""Model presets: tiny random-init Qwen3-VL shapes for CPU runs, and the real Qwen3-VL hub models.

``resolve_model_ref`` turns a user string (preset name, local directory, or hub id) into a
``ModelRef`` saying which it is. Nothing here touches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prism_lab.errors import CheckpointError
from prism_lab.registry import Registry


@dataclass(frozen=True)
class ModelPreset:
    """Shape of a Qwen3-VL policy. For ``family="hub"`` the dims are informational (the checkpoint's
    config.json is authoritative); for ``family="tiny"`` they define the random-init model."""

    name: str
    family: Literal["tiny", "hub"]
    hub_id: str | None
    # text tower
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    # vision tower
    vision_hidden_size: int
    vision_depth: int
    vision_num_heads: int
    vision_intermediate_size: int
    vision_out_hidden_size: int
    deepstack_visual_indexes: tuple[int, ...]
    vision_num_position_embeddings: int = 2304
    patch_size: int = 16
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    image_size: int = 64
    #: Pixel normalisation of the tiny presets' processor: ``(x/255 - mean) / std``. Hub presets ignore
    #: it (their checkpoint's preprocessor config is authoritative; Qwen3-VL uses 0.5 / 0.5).
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    tie_word_embeddings: bool = False
    rope_theta: float = 5_000_000.0
    max_position_embeddings: int = 4096
    description: str = ""

    @property
    def mrope_section(self) -> list[int]:
        return mrope_section_for(self.head_dim)

    def __post_init__(self) -> None:
        if self.family not in ("tiny", "hub"):
            raise ValueError(f"preset {self.name}: family must be 'tiny' or 'hub', got {self.family!r}")
        if self.family == "hub" and not self.hub_id:
            raise ValueError(f"preset {self.name}: a hub preset needs a hub_id")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"preset {self.name}: num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError(f"preset {self.name}: head_dim must be even")
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError(f"preset {self.name}: vision_hidden_size must be divisible by vision_num_heads")
        if self.vision_out_hidden_size != self.hidden_size:
            raise ValueError(f"preset {self.name}: vision_out_hidden_size must equal hidden_size")
        bad = [i for i in self.deepstack_visual_indexes if not 0 <= i < self.vision_depth]
        if bad:
            raise ValueError(f"preset {self.name}: deepstack_visual_indexes {bad} outside vision depth {self.vision_depth}")
        side = int(round(self.vision_num_position_embeddings**0.5))
        if side * side != self.vision_num_position_embeddings:
            raise ValueError(f"preset {self.name}: vision_num_position_embeddings must be a perfect square")


def mrope_section_for(head_dim: int) -> list[int]:
    """Split ``head_dim // 2`` rotary frequencies over (t, h, w) in Qwen's 24:20:20 proportions.

    Returns [t, h, w] with h == w and t taking the remainder, so the sum is exactly ``head_dim // 2``
    ([24, 20, 20] for head_dim 128).
    """
    half = head_dim // 2
    if half < 3:
        raise ValueError(f"head_dim {head_dim} is too small for 3-axis mRoPE")
    hw = max(1, round(half * 20 / 64))
    return [half - 2 * hw, hw, hw]


PRESETS: Registry[ModelPreset] = Registry("model preset")

#: Tiny presets train their vision tower from scratch on white-background synthetic images, so they
#: normalise white to 0 (mean 1.0). With Qwen3-VL's mean 0.5 a white patch is a constant +1 input, and
#: in the first AdamW steps every patch-embedding weight drifts by about the learning rate in the same
#: direction: the tower's output becomes one large constant vector for every image (across-image
#: spread fell from 44% to 1% within 50 SFT steps) and the policy never learns to use the image.
#: With white at 0 only the drawn shapes feed the patch embedding (measured with a throwaway probe: the
#: spread stays near 100%, and counting one colour goes from chance to 0.89 in 1,000 steps; kept as the
#: regression test tests/trainers/test_sft.py::test_tiny_vision_tower_still_tells_images_apart_after_sft).
TINY_IMAGE_MEAN = (1.0, 1.0, 1.0)

#: The toy presets (tiny-s, tiny-m) cut a 64 px image into 8 px patches: 16 image tokens after the 2x2 merge
#: instead of 4. With 16 px patches the tower, even trained directly to tag objects, stayed at chance on shapes
#: for 2,000 steps; with 8 px patches it tells circles, squares and triangles apart within 1,500 (docs/cpu_notes.md
#: §9). tiny-xs, for unit tests, keeps Qwen3-VL's 16.
TINY_PATCH_SIZE = 8


def _add(p: ModelPreset) -> ModelPreset:
    return PRESETS.add(p.name, p)


_add(
    ModelPreset(
        name="tiny-xs", family="tiny", hub_id=None,
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=128,
        vision_hidden_size=32, vision_depth=1, vision_num_heads=2, vision_intermediate_size=64,
        vision_out_hidden_size=64, deepstack_visual_indexes=(0,), vision_num_position_embeddings=64,
        image_mean=TINY_IMAGE_MEAN,
        description="fastest random-init model, for unit tests",
    )
)
_add(
    ModelPreset(
        name="tiny-s", family="tiny", hub_id=None,
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, head_dim=32,
        intermediate_size=256,
        vision_hidden_size=64, vision_depth=2, vision_num_heads=2, vision_intermediate_size=128,
        vision_out_hidden_size=128, deepstack_visual_indexes=(0,), vision_num_position_embeddings=576,
        patch_size=TINY_PATCH_SIZE, image_mean=TINY_IMAGE_MEAN,
        description="~0.77M params (h128 L2 v64x2, 8 px patches; docs/cpu_notes.md §4, §9); the default CPU policy "
                    "for experiments",
    )
)
_add(
    ModelPreset(
        name="tiny-m", family="tiny", hub_id=None,
        hidden_size=192, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2, head_dim=32,
        intermediate_size=512,
        vision_hidden_size=64, vision_depth=2, vision_num_heads=2, vision_intermediate_size=128,
        vision_out_hidden_size=192, deepstack_visual_indexes=(0,), vision_num_position_embeddings=576,
        patch_size=TINY_PATCH_SIZE, image_mean=TINY_IMAGE_MEAN,
        description="~1.7M params (h192 L3 i512, 8 px patches; docs/cpu_notes.md §9), more capacity for longer CPU runs",
    )
)



# Hub models: dims as published in the checkpoints' config.json (informational; loading reads config.json).
_add(
    ModelPreset(
        name="qwen3-vl-2b", family="hub", hub_id="Qwen/Qwen3-VL-2B-Instruct",
        hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
        intermediate_size=6144,
        vision_hidden_size=1024, vision_depth=24, vision_num_heads=16, vision_intermediate_size=4096,
        vision_out_hidden_size=2048, deepstack_visual_indexes=(5, 11, 17),
        image_size=448, tie_word_embeddings=True, max_position_embeddings=262144,
        description="Qwen3-VL-2B-Instruct (the discriminator's dense base)",
    )
)
_add(
    ModelPreset(
        name="qwen3-vl-4b", family="hub", hub_id="Qwen/Qwen3-VL-4B-Instruct",
        hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=9728,
        vision_hidden_size=1024, vision_depth=24, vision_num_heads=16, vision_intermediate_size=4096,
        vision_out_hidden_size=2560, deepstack_visual_indexes=(5, 11, 17),
        image_size=448, tie_word_embeddings=True, max_position_embeddings=262144,
        description="Qwen3-VL-4B-Instruct (paper policy)",
    )
)
_add(
    ModelPreset(
        name="qwen3-vl-8b", family="hub", hub_id="Qwen/Qwen3-VL-8B-Instruct",
        hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        intermediate_size=12288,
        vision_hidden_size=1152, vision_depth=27, vision_num_heads=16, vision_intermediate_size=4304,
        vision_out_hidden_size=4096, deepstack_visual_indexes=(8, 16, 24),
        image_size=448, tie_word_embeddings=False, max_position_embeddings=262144,
        description="Qwen3-VL-8B-Instruct (paper policy)",
    )
)


@dataclass(frozen=True)
class ModelRef:
    """What a model reference string points at.

    kind: "preset" (``preset`` set), "local" (``path`` is a directory with config.json), or
    "hub" (``hub_id`` set; availability offline is checked only when loading).
    """

    kind: Literal["preset", "local", "hub"]
    ref: str
    preset: ModelPreset | None = None
    path: Path | None = None
    hub_id: str | None = None


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or "\\" in ref or ref.count("/") > 1 or ref.endswith("/")


def resolve_model_ref(ref: str | Path) -> ModelRef:
    """Classify ``ref`` as a preset name, a local checkpoint directory, or a hub id.

    Order: preset names first, then existing filesystem paths, then ``owner/name`` hub ids.
    A path must be a directory containing config.json; anything that looks like a path but does
    not exist raises ``CheckpointError``.
    """
    if isinstance(ref, Path):
        ref = str(ref)
    if not isinstance(ref, str) or not ref.strip():
        raise CheckpointError(f"model reference must be a non-empty string, got {ref!r}")
    ref = ref.strip()
    if ref in PRESETS:
        return ModelRef(kind="preset", ref=ref, preset=PRESETS.get(ref))
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"model path {p} is not a directory")
        if not (p / "config.json").is_file():
            raise CheckpointError(f"model directory {p} has no config.json")
        return ModelRef(kind="local", ref=ref, path=p.resolve())
    if _looks_like_path(ref):
        raise CheckpointError(f"model directory {p} does not exist")
    parts = ref.split("/")
    if len(parts) == 2 and all(parts) and " " not in ref:
        return ModelRef(kind="hub", ref=ref, hub_id=ref)
    known = ", ".join(PRESETS.names())
    raise CheckpointError(
        f"unknown model reference {ref!r}: not a preset ({known}), not an existing directory, "
        "and not a hub id of the form owner/name"
    )
