"""The `base` stage: trains the tiny policy that plays Qwen3-VL-Instruct (docs/cpu_notes.md §5)."""

from __future__ import annotations

from pydantic import Field

from prism_lab.config.sft import SFTConfig, SFTDataset


class BaseStageConfig(SFTConfig):
    """Pre-training of the chain's starting model, in three phases: the vision tower alone learns to tag every
    caption image with its objects (``vision_steps``), then the caption rows alone teach the language model to
    read the tower (``caption_steps``), then the caption and instruction rows mixed teach it to answer
    (``max_steps``). The run takes ``vision_steps + caption_steps + max_steps`` optimizer steps, each phase with
    its own warmup and cosine decay.

    One run per size, shared by every cell and seed of the grid (the `seed` axis does not reach it unless
    the grid puts `base` in `seed_scope`): as the paper's Qwen3-VL-Instruct is one checkpoint. A grid without
    a `base` stage starts SFT from the `models` entry itself, as the paper's grid does.
    """

    datasets: list[SFTDataset] = Field(
        default_factory=lambda: ["caption", "instruct"],
        description="SFT sets of the mixed phase (synthetic data: `caption` and `instruct`, the question -> answer "
        "rows data.synth.n_instruct makes).",
    )
    vision_steps: int = Field(
        0, ge=0, description="Optimizer steps of the vision tower alone on the caption images, before the caption "
        "phase (0 = none): it learns to count the objects of each kind in an image through a throwaway classifier, "
        "standing in for a real tower's pre-training. Through the caption loss alone a random-init tower learns "
        "colours but not shapes (docs/cpu_notes.md §9).",
    )
    vision_lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate of the vision phase.")
    caption_steps: int = Field(
        400, ge=0, description="Optimizer steps on the caption rows alone before the mixed phase (0 = none). "
        "A random-init tower is ignored by a language model that only ever has to emit one answer token; a "
        "caption phase first makes it use the image (docs/cpu_notes.md §5).",
    )
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate of both phases (2e-3 stalls tiny-s: "
                      "docs/cpu_notes.md §5).")
    max_steps: int | None = Field(1600, ge=1, description="Optimizer steps of the mixed phase.")
    epochs: float = Field(50.0, gt=0, description="Passes over the data (max_steps stops earlier).")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Linear warmup share of each phase's steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of the peak lr.")
    batch_size: int = Field(32, ge=1, description="Micro-batch size per optimizer micro-step.")
    max_length: int = Field(512, ge=16, description="Truncate sequences longer than this.")
    save_every: int = Field(100, ge=1, description="Write a resumable checkpoint every N steps.")
