"""The one place that knows where a stage run's artifacts live inside its run directory.

    <run dir>/model/            the HF checkpoint of a policy-producing run (sft, align, rl): weights,
                                config, processor, tokenizer, chat template, prism_prompting.json
    <run dir>/base/             an SFT run's copy of the checkpoint its chain starts from (drift reference)
    <run dir>/discriminator/    the discriminator of a disc_warmup or align run (discriminator.json + weights)
    <run dir>/students.jsonl    the students a disc_warmup run generated with its SFT policy (a cache)
    <run dir>/resume/           the trainer's resumable state while the run is in progress (removed at the end)
    <root>/cache/predictions/   generations cached per (checkpoint, benchmark, generation settings)

Where the run directory itself lives (``<root>/runs/<kind>/<key>``), and its ``run.json`` and
``stage.log``, is the harness's business (prism_lab.harness.context).
"""

from __future__ import annotations

import json
from pathlib import Path

from prism_lab.errors import CheckpointError
from prism_lab.trainers.checkpoint import RESUME_DIR

MODEL_SUBDIR = "model"
#: an SFT run's copy of the checkpoint its chain starts from (the reference of the drift measurements)
BASE_SUBDIR = "base"
DISC_SUBDIR = "discriminator"
PREDICTION_CACHE = Path("cache") / "predictions"
#: the disc_warmup run's cache of the students its SFT policy generated (reused when the run resumes)
STUDENTS_CACHE = "students.jsonl"

__all__ = ["BASE_SUBDIR", "DISC_SUBDIR", "MODEL_SUBDIR", "PREDICTION_CACHE", "STUDENTS_CACHE", "checkpoint_dir_of", "discriminator_dir_of",
           "checkpoint_identity", "model_dir", "resume_dir"]


def model_dir(run_dir: str | Path) -> Path:
    """Where a policy-producing run writes its checkpoint."""
    return Path(run_dir) / MODEL_SUBDIR


def resume_dir(run_dir: str | Path) -> Path:
    """Where a run's trainer keeps its resumable state."""
    return Path(run_dir) / RESUME_DIR


def checkpoint_dir_of(path: str | Path) -> Path:
    """The HF checkpoint of a finished run (``<path>/model``), or ``path`` itself when it is a checkpoint."""
    path = Path(path)
    if (path / MODEL_SUBDIR / "config.json").is_file():
        return path / MODEL_SUBDIR
    if (path / "config.json").is_file():
        return path
    raise CheckpointError(f"{path}: not a checkpoint (expected {path / MODEL_SUBDIR}/config.json or {path}/config.json)")


def discriminator_dir_of(path: str | Path) -> Path:
    """The discriminator of a finished run (``<path>/discriminator``), or ``path`` itself when it is one."""
    path = Path(path)
    if (path / DISC_SUBDIR / "discriminator.json").is_file():
        return path / DISC_SUBDIR
    if (path / "discriminator.json").is_file():
        return path
    raise CheckpointError(f"{path}: no discriminator (expected {path / DISC_SUBDIR}/discriminator.json)")


def checkpoint_identity(key: str, run_dir: str | Path) -> str:
    """What the prediction cache knows a checkpoint by: its run's content key and the time its run.json was
    written. A run made again (``sweep run --rerun-stale``) keeps its key but gets new weights, so cached
    predictions of the old weights are never reused for it."""
    try:
        finished = json.loads((Path(run_dir) / "run.json").read_text()).get("finished_at")
    except (OSError, ValueError):
        finished = None
    return key if finished is None else f"{key}@{finished}"
