"""The `base` stage: the model a chain starts from, playing Qwen3-VL-Instruct for the tiny presets.

Inputs: ``data``. Output: ``<artifact>/model``, an HF checkpoint that SFT takes as its ``policy`` input and that
the drift measurements use as the chain's base (``stages/lineage.py``). It trains in three phases: the vision tower
alone on the caption images for ``vision_steps`` (``trainers/vision_tags.py``), then with the SFT loop
(``trainers/sft.py``) the caption rows alone for ``caption_steps``, then ``datasets`` mixed for ``max_steps``.
Each finished phase's result is kept in ``<artifact>/vision`` or ``<artifact>/captions`` until the run ends, so a
killed run restarts after the last phase it finished; the SFT-loop phases also have their own resumable state under
``<artifact>/resume``. The vision phase is short and is redone from its start when killed inside it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from prism_lab.config.pretrain import BaseStageConfig
from prism_lab.data.catalog import DataCatalog
from prism_lab.stages.artifacts import MODEL_SUBDIR, resume_dir
from prism_lab.stages.sft import build_policy, load_examples

if TYPE_CHECKING:  # the harness hands every runner its context; stages never import the harness
    from prism_lab.harness.context import StageContext

#: The checkpoints of the finished phases inside the run directory (removed when the run ends), latest first.
VISION_SUBDIR = "vision"
CAPTIONS_SUBDIR = "captions"


def _restart_point(cfg: BaseStageConfig, out_dir: Path) -> tuple[str | None, Path | None]:
    """(the last phase a killed attempt finished, its checkpoint directory), or (None, None)."""
    for name, steps in ((CAPTIONS_SUBDIR, cfg.caption_steps), (VISION_SUBDIR, cfg.vision_steps)):
        if steps and (out_dir / name / "config.json").is_file():
            return name, out_dir / name
    return None, None


def run(ctx: StageContext) -> dict:
    import torch

    from prism_lab.models import count_parameters, load_policy
    from prism_lab.prompts import Prompting
    from prism_lab.stages.finish import finish_stage
    from prism_lab.trainers.checkpoint import remove_resume_state, save_final
    from prism_lab.trainers.common import setup_threads
    from prism_lab.trainers.recipe import start_run
    from prism_lab.trainers.sft import train_sft
    from prism_lab.trainers.vision_tags import VisionTagSettings, train_vision_tags

    cfg: BaseStageConfig = ctx.config  # type: ignore[assignment]
    env = start_run(cfg.resources)  # one process, or this rank of a torchrun run
    t0 = time.monotonic()
    catalog = DataCatalog.load(ctx.input("data").path)
    mixed = load_examples(catalog, cfg.datasets)
    captions = load_examples(catalog, ["caption"]) if cfg.caption_steps or cfg.vision_steps else []
    done, restart_dir = _restart_point(cfg, ctx.out_dir)
    if restart_dir is not None:  # a restart after a finished phase
        model, processor = load_policy(restart_dir, dtype=torch.float32)
        info = {"model_source": "preset", "restarted_after": done}
    else:
        model, processor, info = build_policy(cfg, catalog)
    if env.is_main:
        params = count_parameters(model)
        print(f"[base] {cfg.model}: {params['total']:,} parameters; {cfg.vision_steps} vision steps, "
              f"{cfg.caption_steps} caption steps, then {cfg.max_steps} steps on {len(mixed)} rows of "
              f"{', '.join(cfg.datasets)}", flush=True)
    phases: dict[str, dict] = {}
    offset = 0  # one step axis over the phases

    def logger_from(start: int):
        return lambda step, values: ctx.log_metrics(start + step, values)

    if cfg.vision_steps:
        if done is None:  # every rank trains the same unsharded tower on the same batches
            setup_threads(cfg.threads)
            settings = VisionTagSettings(steps=cfg.vision_steps, lr=cfg.vision_lr, batch_size=cfg.batch_size,
                                         seed=cfg.seed)
            phases["vision"] = train_vision_tags(model, processor, captions, settings,
                                                 log_metrics=ctx.log_metrics if env.is_main else None,
                                                 heartbeat=ctx.heartbeat)
            save_final(model, processor, ctx.out_dir / VISION_SUBDIR, env)
        offset += cfg.vision_steps
    if cfg.caption_steps:
        if done != CAPTIONS_SUBDIR:
            phase_cfg = cfg.model_copy(update={"datasets": ["caption"], "max_steps": cfg.caption_steps})
            res = train_sft(model, processor, captions, phase_cfg, resume_dir=resume_dir(ctx.out_dir) / "captions",
                            log_metrics=logger_from(offset), heartbeat=ctx.heartbeat, env=env)
            phases["captions"] = res.summary()
            save_final(model, processor, ctx.out_dir / CAPTIONS_SUBDIR, env)
            remove_resume_state(resume_dir(ctx.out_dir) / "captions")
        offset += cfg.caption_steps

    res = train_sft(model, processor, mixed, cfg, resume_dir=resume_dir(ctx.out_dir) / "mixed",
                    log_metrics=logger_from(offset), heartbeat=ctx.heartbeat, env=env)
    phases["mixed"] = res.summary()
    if res.stopped_by == "time":
        ctx.log_metrics(offset + res.steps, {"truncated": 1.0})
    has_system = any(m.get("role") == "system" for ex in mixed[:50] for m in ex.messages)

    def write() -> dict:
        (ctx.out_dir / "train_history.json").write_text(json.dumps(res.history, indent=1))
        return {"steps": offset + res.steps, "final_loss": res.final_loss, "stopped_by": res.stopped_by,
                "phases": phases, "n_examples": len(mixed), "model_dir": MODEL_SUBDIR,
                "stage_wall_s": round(time.monotonic() - t0, 2), "processes": env.world_size, **info}

    # the resumable states of the SFT-loop phases, then the finished phases' checkpoints
    return finish_stage(ctx.out_dir, env, write=write, policy=model, processor=processor,
                        prompting=Prompting(system_prompt=has_system, yesno_instruction=False),
                        remove=[resume_dir(ctx.out_dir) / "mixed", resume_dir(ctx.out_dir),
                                ctx.out_dir / VISION_SUBDIR, ctx.out_dir / CAPTIONS_SUBDIR],
                        export_dtype=cfg.resources.export_dtype)
