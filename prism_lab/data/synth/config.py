"""Options of the embedded synthetic task (validated at plan time, so nothing here imports PIL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from prism_lab.config.base import Seed
from prism_lab.data.synth.questions import FAMILIES
from prism_lab.data.synth.scenes import PALETTE, SHAPES, capacity
from prism_lab.errors import ConfigError


#: Largest synthetic image side: 2048 px is 12 MB per RGB image; 100,000 px would be 30 GB.
MAX_IMAGE_SIZE = 2048


class SynthConfig(BaseModel):
    """Options of the synthetic generator. Defaults give the CPU toy task (64 px images, 3 colours)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    seed: Seed = Field(0, description="Master seed; every split and benchmark derives its own stream from it.")
    image_size: int = Field(
        64, description="Image side in pixels; a multiple of 32 (Qwen3-VL patch 16 x merge 2), from 32 to 2048."
    )
    n_sft_public: int = Field(2000, ge=0, description="Rows of the public SFT mixture (sft_public.json).")
    n_teacher: int = Field(300, ge=0, description="Rows of teacher demonstrations (sft_teacher.json).")
    n_caption: int = Field(
        0, ge=0,
        description="Rows of perception pre-training, image -> dense caption (sft_caption.json; 0 = no file).",
    )
    n_instruct: int = Field(
        0, ge=0,
        description="Rows of instruction data for the `base` stage (base_instruct.json; 0 = no file): a question "
        "and its correct answer, as an instruction-tuned model answers before any PRISM-format SFT.",
    )
    instruct_caption_first_share: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of the counting multiple-choice instruction rows (mcq_count, mcq_most) answered "
        "caption-first (dense caption, reasoning, answer) instead of reasoning alone: the base then copies the "
        "options across a caption, which SFT's caption-first format needs (docs/cpu_notes.md §13).",
    )
    n_rl: int = Field(500, ge=0, description="Rows of the RL parquet (rl_train.parquet).")
    n_warmup: int = Field(300, ge=0, description="Lines of discriminator warmup pairs (2 comparisons each).")
    n_heldout: int = Field(
        32, ge=0, description="Held-out teacher rows (sft_heldout.json) for the drift measurements; never trained on.")
    n_text: int = Field(
        100, ge=0, description="Text-only questions of the lm-eval retention task (bench/synth-text.jsonl; 0 = none).")
    n_bench: int = Field(
        200, ge=0, description="Rows per benchmark TSV (synth-hallusion rounds up to a multiple of 4: 2 figures x 2 questions per set)."
    )
    public_wrong_answer_share: float = Field(
        0.2, ge=0.0, le=1.0, description="Share of public SFT responses (and warmup students) with a wrong final answer."
    )
    public_wrong_caption_share: float = Field(
        0.15, ge=0.0, le=1.0, description="Share of public captions that miscount a group of shapes."
    )
    public_format_error_share: float = Field(
        0.05, ge=0.0, le=1.0, description="Share of public responses that break the caption/think/answer format."
    )
    min_objects: int = Field(1, ge=1, description="Fewest shapes in an image.")
    max_objects: int = Field(8, ge=1, description="Most shapes in an image (hard items draw from the upper half).")
    min_object_size: int = Field(6, ge=3, description="Smallest shape bounding box, pixels.")
    max_object_size: int = Field(12, ge=3, description="Largest shape bounding box, pixels.")
    colours: list[str] = Field(
        default_factory=lambda: ["red", "green", "blue"],
        description=f"Colours drawn, in caption order; subset of {list(PALETTE)}.",
    )
    shapes: list[str] = Field(
        default_factory=lambda: list(SHAPES), description=f"Shapes drawn, in caption order; subset of {list(SHAPES)}."
    )
    families: list[str] = Field(
        default_factory=lambda: list(FAMILIES),
        description=f"Question families in the training files; subset of {list(FAMILIES)}.",
    )
    include_system_prompt: bool = Field(
        True, description="Prepend the paper's system prompt as a system message (CPU toy grids set False to save tokens)."
    )
    hard_share: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of hard items (more objects, multi-step questions) in public SFT, RL and warmup."
    )
    teacher_hard_share: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of hard items among teacher demonstrations (paper: the hardest items)."
    )
    bench_hard_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of hard items in the benchmarks.")
    data_source: str = Field("prism_synth", min_length=1, description="data_source value of RL rows.")

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v < 32 or v % 32 or v > MAX_IMAGE_SIZE:
            raise ValueError(f"expected a multiple of 32 from 32 to {MAX_IMAGE_SIZE}, got {v}")
        return v

    @field_validator("colours")
    @classmethod
    def _colours(cls, v: list[str]) -> list[str]:
        return _subset(v, list(PALETTE))

    @field_validator("shapes")
    @classmethod
    def _shapes(cls, v: list[str]) -> list[str]:
        return _subset(v, list(SHAPES))

    @field_validator("families")
    @classmethod
    def _families(cls, v: list[str]) -> list[str]:
        return _subset(v, list(FAMILIES))

    @model_validator(mode="after")
    def _ranges(self) -> "SynthConfig":
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) must be <= max_objects ({self.max_objects})")
        if self.min_object_size > self.max_object_size:
            raise ValueError(
                f"min_object_size ({self.min_object_size}) must be <= max_object_size ({self.max_object_size})"
            )
        if self.max_object_size > self.image_size // 2:
            raise ValueError(f"max_object_size ({self.max_object_size}) must be <= image_size/2 ({self.image_size // 2})")
        if len(self.colours) * len(self.shapes) < 2:
            raise ValueError("colours x shapes must give at least 2 kinds of object (presence questions need an absent kind)")
        cap = capacity(self.image_size, self.max_object_size)
        if self.max_objects > cap:
            raise ValueError(
                f"max_objects ({self.max_objects}) does not fit: at most {cap} shapes of {self.max_object_size} px "
                f"fit in {self.image_size} px"
            )
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "SynthConfig":
        """Validate a plain mapping; errors become one ConfigError naming each bad field."""
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as e:
            raise ConfigError(format_validation_error(e)) from None


def _subset(v: list[str], known: list[str]) -> list[str]:
    if not v:
        raise ValueError(f"expected a non-empty list, subset of {known}")
    bad = [x for x in v if x not in known]
    if bad:
        raise ValueError(f"expected a subset of {known}, got unknown {bad}")
    if len(set(v)) != len(v):
        raise ValueError(f"expected no duplicates, got {v}")
    return v


def format_validation_error(e: ValidationError, what: str = "synth config") -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown option; known: {', '.join(SynthConfig.model_fields)}"
        elif "got" not in msg and err.get("input") is not None and not isinstance(err.get("input"), dict):
            msg = f"{msg} (got {err['input']!r})"
        parts.append(f"field '{loc}': {msg}" if loc else msg)
    return f"{what}: " + "; ".join(parts)
