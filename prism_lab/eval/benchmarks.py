"""Benchmark registry: one YAML file per benchmark under the repository's ``benchmarks/`` directory.

A spec names the TSV (VLMEvalKit layout, see ``prism_lab.data.bench_tsv``), how it is judged (``kind``)
and the generation settings. Defaults follow the paper's evaluation (docs/prism_method.md §8:
temperature 1.0, top_p 0.7, top_k -1, sampled); the synthetic benchmarks override them to greedy.

``kind: lmeval`` benchmarks are text-only capability-retention tasks run by lm-eval
(``prism_lab.eval.lmeval``): ``lmeval_task`` names an lm-eval task or a task YAML under
``benchmarks/lmeval/`` and ``file`` (optional) the generated data file it reads. They form the report's
"text retention" group; every other benchmark is in the "vision" group (the paper's Avg).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from prism_lab.errors import ConfigError

#: ``<repo>/benchmarks`` (this file is ``<repo>/prism_lab/eval/benchmarks.py``).
DEFAULT_BENCHMARK_DIR = Path(__file__).resolve().parents[2] / "benchmarks"

#: Report groups: the paper's vision benchmarks, and text-only retention (lm-eval) tasks.
VISION_GROUP = "vision"
RETENTION_GROUP = "text retention"


class BenchmarkSpec(BaseModel):
    """One benchmark: where its TSV is, how answers are judged, and how to generate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(..., min_length=1, description="Registry name (what grids list under `benchmarks:`).")
    kind: Literal["mcq", "yesno", "open", "lmeval", "lmms"] = Field(
        ...,
        description="Judging: `mcq` = option letter; `yesno` = Yes/No rule; `open` = rule judge on the answer "
        "string (rows that carry options are judged by letter); `lmeval` = an lm-eval task and its metric; "
        "`lmms` = an lmms-eval task (`lmms_task`, the paper's kit) and its own metric, run by the `lmms_eval` backend.",
    )
    file: str | None = Field(
        None, min_length=1, description="TSV file name (VLMEvalKit layout); for `lmeval`, the task's data file "
        "(JSONL) if it reads a generated one.")
    source: Literal["synth", "vlmevalkit", "hf", "lmms"] = Field(
        ..., description="`synth`: <data_dir>/bench/<file> from the generator; `vlmevalkit`: $LMUData/<file>; "
        "`hf`: an lm-eval task's own dataset, from the Hugging Face cache (offline); `lmms`: an lmms-eval task's "
        "dataset (`lmms_dataset`), from the Hugging Face cache (offline).")
    vlmeval_name: str | None = Field(
        None, description="VLMEvalKit dataset name (for the vlmevalkit backend / official TSVs)."
    )
    description: str = Field("", description="What the benchmark measures.")
    max_new_tokens: int = Field(8192, ge=1, description="Generation budget (paper: 8192 for MMMU/HallusionBench).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (paper eval: 1.0).")
    top_p: float = Field(0.7, gt=0.0, le=1.0, description="Nucleus sampling (paper eval: 0.7).")
    top_k: int = Field(
        -1, ge=-1, description="Top-k; -1 = disabled (paper). HF generate defaults to 50, so pass it explicitly."
    )
    do_sample: bool = Field(True, description="Sample (True, paper) or greedy decode (False).")
    paper_column: str | None = Field(None, description="The paper table column this benchmark stands in for.")
    keep_noimg: bool = Field(
        False, description="Keep rows without an image as text-only items (default: drop them, as VLMEvalKit's "
        "image benchmarks do).")
    lmeval_task: str | None = Field(
        None, description="`lmeval`: an lm-eval task name (`arc_easy`) or a task YAML path relative to this file.")
    lmeval_metric: str | None = Field(
        None, description="`lmeval`: the metric[,filter] reported as accuracy (default: the task's first).")
    num_fewshot: int | None = Field(None, ge=0, description="`lmeval`: few-shot examples (default: the task's).")
    chat_template: bool = Field(False, description="`lmeval`: wrap prompts in the checkpoint's chat template.")
    lmms_task: str | None = Field(
        None, description="`lmms`: the lmms-eval task or group, as the PRISM eval script names it (`mathvista_testmini`).")
    lmms_dataset: str | None = Field(
        None, description="`lmms`: the task's Hugging Face dataset id; the benchmark is skipped when it is not cached.")

    _dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> "BenchmarkSpec":
        if self.kind == "lmms":
            if not (self.lmms_task and self.lmms_dataset):
                raise ValueError("a `kind: lmms` benchmark needs `lmms_task` and `lmms_dataset`")
            if self.file is not None:
                raise ValueError("a `kind: lmms` benchmark reads its task's dataset, not a file: remove `file`")
        elif self.kind == "lmeval":
            if not self.lmeval_task:
                raise ValueError("a `kind: lmeval` benchmark needs `lmeval_task`")
            if self.file is not None and not self.file.endswith((".jsonl", ".json")):
                raise ValueError(f"file must be a .jsonl or .json data file name, got {self.file!r}")
        elif self.file is None or not self.file.endswith(".tsv"):
            raise ValueError(f"file must be a .tsv file name, got {self.file!r}")
        return self

    @property
    def is_task(self) -> bool:
        """An lm-eval / lmms-eval task (the kit reads its data), not a TSV of items prism-lab reads."""
        return self.kind in ("lmeval", "lmms")

    @property
    def group(self) -> str:
        """The report group: ``text retention`` for lm-eval tasks, ``vision`` otherwise."""
        return RETENTION_GROUP if self.kind == "lmeval" else VISION_GROUP

    @property
    def spec_dir(self) -> Path:
        """The directory of the YAML this spec was read from (relative task YAMLs resolve against it)."""
        return self._dir or DEFAULT_BENCHMARK_DIR

    def tsv_path(self, data_dir: str | Path | None = None, lmu_root: str | Path | None = None) -> Path:
        """Where the TSV lives: ``<data_dir>/bench/<file>`` for synth, ``<lmu_root or $LMUData>/<file>`` else."""
        if self.source == "synth":
            if data_dir is None:
                raise ConfigError(f"benchmark {self.name!r}: a synth benchmark needs the generated data directory")
            return Path(data_dir) / "bench" / self.file
        if lmu_root is None:
            import os

            lmu_root = os.environ.get("LMUData") or Path.home() / "LMUData"
        return Path(lmu_root) / self.file

    def generation_kwargs(self) -> dict[str, object]:
        """Keyword arguments for HF ``generate``: greedy drops the sampling knobs."""
        kw: dict[str, object] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=0 if self.top_k < 0 else self.top_k)
        return kw


def _format_error(path: Path, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; known: {', '.join(BenchmarkSpec.model_fields)}"
        parts.append(f"field '{loc}': {msg}")
    return f"{path}: " + "; ".join(parts)


def load_spec_file(path: str | Path) -> BenchmarkSpec:
    """Parse and validate one benchmark YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of benchmark fields, got {type(data).__name__}")
    try:
        spec = BenchmarkSpec.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None
    spec._dir = path.resolve().parent
    return spec


def _dirs(search_dirs: Iterable[str | Path] | None) -> list[Path]:
    return [DEFAULT_BENCHMARK_DIR] if search_dirs is None else [Path(d) for d in search_dirs]


def all_benchmarks(search_dirs: Iterable[str | Path] | None = None) -> dict[str, BenchmarkSpec]:
    """Every spec in ``search_dirs`` (default: the repo's benchmarks/), by name. Duplicate names are errors."""
    specs: dict[str, BenchmarkSpec] = {}
    where: dict[str, Path] = {}
    for d in _dirs(search_dirs):
        if not d.is_dir():
            continue
        for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            spec = load_spec_file(p)
            if spec.name in specs:
                raise ConfigError(f"{p}: benchmark name {spec.name!r} is already defined in {where[spec.name]}")
            specs[spec.name] = spec
            where[spec.name] = p
    return dict(sorted(specs.items()))


def list_benchmarks(search_dirs: Iterable[str | Path] | None = None) -> list[str]:
    """Sorted names of the known benchmarks."""
    return list(all_benchmarks(search_dirs))


def load_benchmark(name: str, search_dirs: Iterable[str | Path] | None = None) -> BenchmarkSpec:
    """The spec called ``name``; unknown names raise ConfigError listing the known ones."""
    dirs = _dirs(search_dirs)
    specs = all_benchmarks(dirs)
    if name not in specs:
        known = ", ".join(specs) or "(none)"
        raise ConfigError(
            f"unknown benchmark {name!r}; known: {known} (searched {', '.join(str(d) for d in dirs)})"
        )
    return specs[name]
