"""Stage kinds: a name, a typed config, a runner, and a version that enters every content key.

Configs and runners are referenced as ``module:attr`` strings and imported lazily, so planning a grid
never imports torch or transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from pydantic import BaseModel

from prism_lab.registry import Registry, import_ref


@dataclass(frozen=True)
class StageKind:
    """One kind of stage run.

    ``version`` is part of every content key: bump it when a change to the stage's code changes what it
    produces, so stale artifacts are not reused. Version 2 of sft, disc_warmup, align and rl: their data
    order and sampling seeds follow the one seed policy (prism_lab.seeds).
    """

    name: str
    config: str
    runner: str
    description: str
    version: int = 1
    produces_checkpoint: bool = False

    def config_model(self) -> type[BaseModel]:
        return _cached_import(self.config)

    def load_runner(self) -> Callable[..., Any]:
        return import_ref(self.runner)

    def is_available(self) -> bool:
        """True when the runner's module can be imported in this installation."""
        module = self.runner.partition(":")[0]
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False


@cache
def _cached_import(ref: str) -> Any:
    return import_ref(ref)


STAGE_KINDS: Registry[StageKind] = Registry("stage kind")


def register_stage_kind(kind: StageKind, *, replace: bool = False) -> StageKind:
    return STAGE_KINDS.add(kind.name, kind, replace=replace)


for _kind in (
    StageKind(
        "data", "prism_lab.config.data:DataConfig", "prism_lab.stages.data:run",
        "generate the synthetic task or fingerprint local datasets",
    ),
    StageKind(
        "base", "prism_lab.config.pretrain:BaseStageConfig", "prism_lab.stages.base:run",
        "train the model a chain starts from (plays Qwen3-VL-Instruct for the tiny presets)", produces_checkpoint=True,
    ),
    StageKind(
        "sft", "prism_lab.config.sft:SFTConfig", "prism_lab.stages.sft:run",
        "supervised fine-tuning (stage 1)", produces_checkpoint=True, version=2,
    ),
    StageKind(
        "disc_warmup", "prism_lab.config.align:DiscWarmupConfig", "prism_lab.stages.disc_warmup:run",
        "upcycle and warm up the MoE discriminator (pairwise Bradley-Terry)", produces_checkpoint=True, version=2,
    ),
    StageKind(
        "align", "prism_lab.config.align:AlignConfig", "prism_lab.stages.align:run",
        "PRISM alignment: on-policy distillation against the MoE discriminator (stage 2)",
        produces_checkpoint=True, version=2,
    ),
    StageKind(
        "rl", "prism_lab.config.rl:RLConfig", "prism_lab.stages.rl:run",
        "RL with verifiable rewards: GRPO, DAPO or GSPO (stage 3)", produces_checkpoint=True, version=2,
    ),
    StageKind(
        "eval", "prism_lab.config.eval:EvalConfig", "prism_lab.stages.eval:run",
        "generate on benchmarks and score the answers",
    ),
):
    register_stage_kind(_kind)
