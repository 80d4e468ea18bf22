"""Where a pipeline's data comes from: the embedded synthetic task, or local files in the real schemas."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from prism_lab.config.base import StrictModel


class LocalDataFiles(StrictModel):
    """Paths to datasets on local disk, in the PRISM release schemas (docs/prism_method.md §5.1, §6.1)."""

    sft: list[str] = Field(
        default_factory=list,
        description="ShareGPT-style multimodal SFT JSON files (public mixture + teacher demos), mixed.",
    )
    rl: str | None = Field(None, description="RL parquet (verl schema + teacher_caption/teacher_cot).")
    warmup: str | None = Field(None, description="Discriminator warmup pairs, JSONL (docs/prism_method.md §5.1).")
    heldout: str | None = Field(
        None, description="Held-out teacher rows (ShareGPT JSON, never trained on) for the eval stage's drift "
        "measurements; none = no drift numbers.")
    bench_dir: str | None = Field(
        None, description="Directory of VLMEvalKit-format benchmark TSVs (defaults to $LMUData)."
    )
    image_root: str | None = Field(None, description="Base directory for relative image paths.")


class DataConfig(StrictModel):
    """The `data` stage: produces (or fingerprints) every dataset the other stages read."""

    source: Literal["synth", "local"] = Field(
        "synth", description="`synth`: generate the embedded multimodal task; `local`: read files."
    )
    synth: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of the synthetic generator (prism_lab.data.synth.config.SynthConfig; the pipeline validates them at plan time).",
    )
    local: LocalDataFiles | None = Field(None, description="Local files, when source is `local`.")

    @model_validator(mode="after")
    def _check_source(self) -> "DataConfig":
        if self.source == "local" and self.local is None:
            raise ValueError("source 'local' needs a `local:` section with the dataset paths")
        return self
