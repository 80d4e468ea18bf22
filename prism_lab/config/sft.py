"""Stage 1, SFT. Defaults follow the paper's LLaMA-Factory run (docs/prism_method.md §3)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from prism_lab.config.base import Seed, StrictModel
from prism_lab.config.resources import ResourcesConfig, check_covers_processes, resources_field


#: The SFT sets a data catalog can name (prism_lab.data.catalog.DataCatalog.sft_files).
SFTDataset = Literal["public", "teacher", "caption", "instruct"]


class SFTConfig(StrictModel):
    """Supervised fine-tuning on the public mixture plus the teacher demonstrations."""

    model: str = Field(
        "",
        description="Model preset name (tiny-s, qwen3-vl-4b, ...), local checkpoint directory or hub id. "
        "Filled from the grid's `models` map by the `size` axis.",
    )
    datasets: list[SFTDataset] = Field(
        default_factory=lambda: ["public", "teacher"],
        description="Which SFT sets to mix (the paper uses public + teacher: 1.26M + 113K). `caption` "
        "(synthetic data only) adds image -> dense caption rows: perception pre-training for a "
        "random-init tiny tower, standing in for a real checkpoint's visual pre-training.",
    )
    tokenizer_vocab_size: int = Field(
        512, ge=64, description="Vocabulary of the locally trained tokenizer (tiny presets only)."
    )
    lr: float = Field(1e-5, gt=0, description="Peak AdamW learning rate (paper: 1e-5).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    vision_lr_scale: float = Field(
        1.0, gt=0, description="Learning rate of the vision tower relative to `lr` (1 = the paper's single lr)."
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    epochs: float = Field(1.0, gt=0, description="Passes over the data (paper: 1).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    max_minutes: float | None = Field(
        None, gt=0, description="Wall-clock budget; training stops (and saves) when it is spent. The result then "
        "depends on the machine's speed and load, so the run is marked truncated in the ledger and the report: "
        "use max_steps for anything you compare. No shipped grid sets it."
    )
    warmup_ratio: float = Field(0.1, ge=0, le=1, description="Linear warmup share of steps (paper: 0.1).")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a fraction of the peak lr.")
    batch_size: int = Field(2, ge=1, description="Micro-batch size per optimizer micro-step.")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps (global batch = batch x accum).")
    length_groups: int = Field(
        1, ge=1, description="Cut each micro-batch (each process's share of it) into this many forward passes of "
        "rows of similar length, each padded to its own longest row. The loss is still summed over the step's "
        "label tokens, so the gradient is the same up to float rounding, for less compute spent on padding: 4 "
        "cuts a tiny-m step on CPU to about 0.7 of its time, about 1.5 times as fast (docs/cpu_notes.md §14). 1 = one padded batch.",
    )
    max_length: int = Field(8192, ge=16, description="Truncate sequences longer than this (paper: 8192).")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="`auto` = bf16 where the device supports it, fp32 on CPU."
    )
    save_every: int = Field(200, ge=1, description="Write a resumable checkpoint every N steps.")
    log_every: int = Field(10, ge=1, description="Log metrics every N steps.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None = torch default).")
    seed: Seed = Field(0, description="Seed for init (tiny presets), data order and dropout.")
    resources: ResourcesConfig = resources_field(
        "`batch_size` and `grad_accum` stay global: each micro-batch is split over the processes.")

    @model_validator(mode="after")
    def _batch_covers_processes(self) -> SFTConfig:
        check_covers_processes(self.batch_size, "batch_size", self.resources)
        share = self.batch_size // self.resources.processes
        if self.length_groups > share:
            raise ValueError(f"length_groups ({self.length_groups}) must be at most the rows of a micro-batch per "
                             f"process ({share}: batch_size {self.batch_size} over {self.resources.processes})")
        return self
