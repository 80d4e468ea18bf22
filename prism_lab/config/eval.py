"""The evaluation stage: one run per checkpoint, all of the grid's benchmarks (docs/prism_method.md §8)."""

from __future__ import annotations

import re

from pydantic import Field, ValidationInfo, field_validator, model_validator

from prism_lab.config.base import KeyStable, Seed, StrictModel, registered_name
from prism_lab.config.resources import ResourcesConfig

EvalBackendName = registered_name("prism_lab.eval.backends", "EVAL_BACKENDS", "eval backend", ("register_backend",))

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class JudgeSettings(StrictModel):
    """An OpenAI-compatible chat-completions endpoint asked about the answers the rule judge did not accept (the
    paper's protocol: a served Qwen2.5-32B-Instruct, binary verdict on the full response; prism_lab/eval/judge.py)."""

    url: str = Field(description="Base URL of the endpoint, e.g. `http://127.0.0.1:8000/v1` (it serves `/models` "
                     "and `/chat/completions`).")
    model: str = Field(min_length=1, description="The served model name to ask (it must be listed by `/models`).")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (None: no key is sent).")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="Seconds to wait for one answer.")
    retries: int = Field(2, ge=0, le=10, description="Tries after the first when the endpoint cannot be reached, "
                         "times out or answers 429/5xx.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) base URL such as http://127.0.0.1:8000/v1, got {value!r}")
        return value.strip().rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"expected the name of an environment variable (letters, digits, _), got {value!r}")
        return value


class EvalConfig(StrictModel, KeyStable):
    """Generation and scoring settings; predictions are cached per (checkpoint, benchmark, settings)."""

    added_fields = ("judge",)

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
    judge: JudgeSettings | None = Field(
        None, description="The model judge asked about every answer of a TSV benchmark the rule judge did not accept "
        "(builtin backend; None: rule scoring only). Its model and served version enter each benchmark's evaluation "
        "fingerprint.")

    @field_validator("judge")
    @classmethod
    def _judge_needs_builtin(cls, value: JudgeSettings | None, info: ValidationInfo) -> JudgeSettings | None:
        backend = info.data.get("backend", "builtin")
        if value is not None and backend != "builtin":
            raise ValueError(f"applies to the builtin backend's scoring only, not {backend!r} (VLMEvalKit reads "
                             "PRISM_JUDGE_URL in its worker: docs/vlmevalkit.md)")
        return value
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
