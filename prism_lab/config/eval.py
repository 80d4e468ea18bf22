"""The evaluation stage: one run per checkpoint, all of the grid's benchmarks (docs/prism_method.md §8)."""

from __future__ import annotations

from pydantic import Field, model_validator

from prism_lab.config.base import Seed, StrictModel, registered_name
from prism_lab.config.resources import ResourcesConfig

EvalBackendName = registered_name("prism_lab.eval.backends", "EVAL_BACKENDS", "eval backend", ("register_backend",))


class EvalConfig(StrictModel):
    """Generation and scoring settings; predictions are cached per (checkpoint, benchmark, settings)."""

    benchmarks: list[str] = Field(default_factory=list, description="Benchmark names (benchmarks/*.yaml).")
    backend: EvalBackendName = Field(
        "builtin",
        description="`builtin` scorer or VLMEvalKit's own inference and evaluate "
        "(prism_lab.eval.backends.EVAL_BACKENDS).",
    )
    batch_size: int = Field(16, ge=1, description="Generation batch size.")
    temperature: float | None = Field(
        None, ge=0, description="Override each benchmark's temperature (paper eval: 1.0; 0 = greedy)."
    )
    top_p: float | None = Field(None, gt=0, le=1, description="Override each benchmark's top-p (paper: 0.7).")
    max_new_tokens: int | None = Field(None, ge=1, description="Override each benchmark's max_new_tokens.")
    limit: int | None = Field(None, ge=1, description="Evaluate only the first N items of each benchmark.")
    bench_dir: str | None = Field(
        None, description="Directory of benchmark TSVs; None = the data run's catalog, else $LMUData."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None = torch default).")
    seed: Seed = Field(0, description="Seed for sampled generation.")
    drift: bool = Field(
        True, description="Measure drift on the data's held-out teacher rows: teacher NLL, KL from the chain's base, "
        "discriminator gaps (stages/drift.py).")
    drift_items: int = Field(32, ge=1, description="Held-out teacher rows used for the drift measurements.")
    drift_max_new_tokens: int = Field(
        64, ge=1, description="Length of the base's samples (KL from base) and of the checkpoint's responses "
        "(discriminator gaps).")
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig,
        description="Where the eval runs (prism_lab/config/resources.py): one process, with `gpus: 1` on a GPU of its "
        "own (the local executor gives it one from `--gpus` / CUDA_VISIBLE_DEVICES, Ray reserves one) or `gpus: 0` "
        "on the CPU; `cpus` as for any stage. The training fields (dtypes, checkpointing, offload) do not apply.")

    @model_validator(mode="after")
    def _one_process(self) -> EvalConfig:
        if self.resources.processes != 1:
            raise ValueError(f"resources.processes ({self.resources.processes}) must be 1: an eval runs in one process "
                             "(resources.gpus 0 for the CPU or 1 for a GPU of its own)")
        return self
