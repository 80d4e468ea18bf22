"""What one stage run needs from the machine: processes, GPUs, CPUs, dtypes, checkpointing, offload.

Every stage config that trains has a ``resources`` field of this type, and so has the eval stage's (one
process: ``gpus`` 0 or 1). The executors read it from
the plan (no torch import): the local executor starts a run with ``processes > 1`` under torchrun and
gives it ``gpus`` GPUs of its own; the memory planner (``sweep plan --resources``) sizes it.

The paper ran every stage on 8 x H100-80GB (README of github.com/XIAO4579/PRISM, "Reproduction
hyperparameters"); its alignment and RLVR scripts (``scripts/train/experiment/qwen3_vl_prism.sh``,
``qwen3_vl_*_after_prism.sh``) use FSDP with ``param_offload`` and ``optimizer_offload``,
``enable_gradient_checkpointing`` and bf16; ``experiments/paper.yaml`` sets the same here. The
defaults are one CPU process, as before.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from prism_lab.config.base import KeyStable, StrictModel

#: The most CPU cores one run may ask for: above the largest single machines sold (a few hundred cores,
#: up to ~2000 hardware threads), so a typo like 10**6 is refused at load instead of queued forever.
MAX_CPUS = 4096

#: Fields that only the planner reads, with their defaults: content keys hash them at these values
#: (harness/plan.py), so a hint never changes a run's identity.
PLANNER_HINTS: dict[str, object] = {"memory_gb": None, "host_memory_gb": None}
#: Planner hints added after runs were keyed: left out of the hashed config entirely, so every earlier key holds.
UNKEYED_HINTS = ("host_memory_gb",)


class ResourcesConfig(StrictModel, KeyStable):
    """Processes, devices and memory policy of one stage run (field names are stable: executors read them).

    The counts and switches are strict: ``processes: true`` or ``offload: "yes"`` are refused, not read
    as 1 and True (pydantic's lax mode would)."""

    added_fields = ("export_dtype",)

    processes: int = Field(
        1, ge=1, le=1024, strict=True,
        description="Ranks per stage run (the torchrun world size). >1 shards the trained models with FSDP2 "
        "and splits every global batch over the ranks (same global batch at any number).",
    )
    gpus: int = Field(
        0, ge=0, le=1024, strict=True,
        description="GPUs per stage run: 0 = CPU, else one GPU per rank (must equal `processes`). The local "
        "executor hands each run its own GPUs from `--gpus` / CUDA_VISIBLE_DEVICES and queues the rest.",
    )
    cpus: int | None = Field(
        None, ge=1, le=MAX_CPUS, strict=True,
        description="CPU cores a run needs (what a cluster scheduler reserves; None = one per process).",
    )
    param_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Dtype the gathered parameters compute in (FSDP2 MixedPrecisionPolicy.param_dtype). "
        "`auto` follows the stage's `precision` (bf16 on a GPU that has it, fp32 on CPU).",
    )
    reduce_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="Dtype of the gradient reduce-scatter across ranks (MixedPrecisionPolicy.reduce_dtype).",
    )
    master_dtype: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Dtype of the sharded master parameters the optimizer updates (and of its state).",
    )
    gradient_checkpointing: bool = Field(
        False, strict=True, description="Recompute each block's activations in the backward pass (less memory, ~1/3 more compute).",
    )
    offload: bool = Field(
        False, strict=True,
        description="Keep sharded parameters, gradients and optimizer state in host memory (FSDP2 CPUOffloadPolicy; "
        "the paper's param + optimizer offload). Only meaningful on GPUs.",
    )
    export_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Dtype of the floating weights in the stage's final policy checkpoint, stated in its config.json "
        "(`dtype`), which vLLM and `from_pretrained(dtype='auto')` load. `auto` = bf16 when the run trains on CUDA, "
        "fp32 on CPU. Intermediate, resumable and discriminator checkpoints stay as trained.",
    )
    memory_gb: float | None = Field(
        None, gt=0, le=1 << 20, strict=True,
        description="Memory of one device in GB for the planner's fit check (None = what the executor detects: "
        "the GPUs' memory, or host memory on CPU).",
    )
    host_memory_gb: float | None = Field(
        None, gt=0, le=1 << 24, strict=True,
        description="Host memory of the node running a GPU run's ranks, in GB, for the planner's host check: every "
        "rank loads its models in fp32 before sharding, and offloaded state lives there (None = not checked; a CPU "
        "run's host memory is its device, checked against `memory_gb` or the detected memory).",
    )

    @model_validator(mode="after")
    def _gpus_match_processes(self) -> ResourcesConfig:
        if self.gpus and self.gpus != self.processes:
            raise ValueError(f"gpus ({self.gpus}) must be 0 (CPU) or equal processes ({self.processes}): one GPU per rank")
        return self

    @property
    def world_size(self) -> int:
        return self.processes

    @property
    def cpus_needed(self) -> int:
        return self.cpus or self.processes


def resources_field(global_part: str) -> Any:
    """The ``resources`` field of a training stage config; ``global_part`` says which of its sizes stay
    global (split over the processes)."""
    return Field(default_factory=ResourcesConfig,
                 description="Processes, GPUs, dtypes, gradient checkpointing and offload of the run "
                 f"(prism_lab/config/resources.py). {global_part}")


def check_covers_processes(value: int, name: str, resources: ResourcesConfig) -> None:
    """ValueError unless ``value`` (a global batch size called ``name``) gives every process a share."""
    if value < resources.processes:
        raise ValueError(f"{name} ({value}) must be at least resources.processes ({resources.processes}): "
                         "every process takes a share of it")
