"""The `align` stage: PRISM alignment (stage 2, docs/prism_method.md §6).

Inputs: ``policy`` (the SFT artifact, HF checkpoint at ``<path>/model``), ``discriminator`` (a `disc_warmup`
artifact, ``<path>/discriminator``) and ``data`` (its catalog's RL parquet, which must carry non-empty
``teacher_caption``/``teacher_cot``). The discriminator must read the policy's inputs (same tokenizer and image
preprocessing; checked before loading). Outputs: ``<out_dir>/model`` (the aligned policy) and
``<out_dir>/discriminator`` (the updated discriminator). The resumable state lives in ``<out_dir>/resume`` and
is removed at the end. Rollouts use the HF engine on the trained weights, or (``rollout_engine: vllm``) one
colocated vLLM engine per rank, built from the input policy's checkpoint and synced before each step's rollout
(prism_lab/rollout/colocate.py). With ``resources.processes`` > 1 every rank runs this under torchrun
(trainers/align.py shards the work); rank 0 alone writes the gathered policy and discriminator.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from prism_lab.errors import DataError
from prism_lab.stages.artifacts import (
    DISC_SUBDIR,
    MODEL_SUBDIR,
    checkpoint_dir_of,
    discriminator_dir_of,
)

if TYPE_CHECKING:  # the harness hands every runner its context; stages never import the harness
    from prism_lab.harness.context import StageContext

def run(ctx: StageContext) -> dict:
    import torch

    from prism_lab.data.catalog import DataCatalog
    from prism_lab.data.rl_parquet import read_rl_parquet
    from prism_lab.models import load_policy
    from prism_lab.models.discriminator import load_discriminator
    from prism_lab.stages.finish import finish_stage
    from prism_lab.trainers.align import align_examples_from_rl, run_align
    from prism_lab.trainers.progress import StepProgress
    from prism_lab.trainers.recipe import start_run

    cfg = ctx.config
    env = start_run(getattr(cfg, "resources", None))  # one process, or this rank of a torchrun run
    t0 = time.monotonic()
    catalog = DataCatalog.load(ctx.input("data").path)
    if not catalog.rl:
        raise DataError(f"{ctx.input('data').path}: the data catalog names no RL parquet")
    examples = align_examples_from_rl(read_rl_parquet(catalog.rl, require_teacher=True, image_root=catalog.image_root))
    policy, processor = load_policy(checkpoint_dir_of(ctx.input("policy").path), dtype=torch.float32)
    disc = load_discriminator(discriminator_dir_of(ctx.input("discriminator").path), policy_processor=processor,
                              dtype=torch.float32)
    if env.is_main:
        print(f"[align] variant={cfg.variant}: {len(examples)} prompts, {cfg.steps} steps x "
              f"{cfg.prompts_per_step} prompts x n={cfg.n}, {env.world_size} process(es)", flush=True)
    progress = StepProgress("align", ctx.log_metrics, total=cfg.steps, enabled=env.is_main,
                            keys=("gap/caption", "gap/cot", "cap_acc", "cot_acc", "format_rate", "response_length"))
    summary = run_align(policy, processor, disc, examples, cfg, out_dir=ctx.out_dir, log=progress,
                        heartbeat=ctx.heartbeat, env=env, checkpoint_dir=checkpoint_dir_of(ctx.input("policy").path))

    def write() -> dict:
        (ctx.out_dir / "align_curves.json").write_text(json.dumps(summary.get("curves", {}), indent=1))
        return {**{k: v for k, v in summary.items() if k != "curves"}, "model_dir": MODEL_SUBDIR,
                "discriminator_dir": DISC_SUBDIR, "stage_wall_s": round(time.monotonic() - t0, 2),
                "processes": env.world_size}

    # the resumable state is removed by run_align itself (keep_resume)
    return finish_stage(ctx.out_dir, env, write=write, policy=policy, processor=processor,
                        prompting_from=checkpoint_dir_of(ctx.input("policy").path), discriminator=disc,
                        export_dtype=cfg.resources.export_dtype)
