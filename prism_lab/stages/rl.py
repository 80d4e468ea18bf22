"""The `rl` stage (RLVR, stage 3): load the input policy and the RL parquet, run GRPO/DAPO/GSPO, save.

Inputs: ``policy`` (an artifact with an HF checkpoint at ``<path>/model``) and ``data`` (a `data`
run whose catalog names the RL parquet). Output: the trained policy at ``out_dir/model`` (the
checkpoint contract). Resumable state lives in ``out_dir/resume`` while the run is in progress and
is removed once the final policy is saved.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from prism_lab.config.algorithms import resolve_algorithm
from prism_lab.config.rl import RLConfig
from prism_lab.data.catalog import DataCatalog
from prism_lab.data.rl_parquet import read_rl_parquet
from prism_lab.errors import DataError
from prism_lab.models import load_policy, pick_device
from prism_lab.stages.artifacts import checkpoint_dir_of, resume_dir
from prism_lab.stages.finish import finish_stage
from prism_lab.trainers.common import set_seed, setup_threads
from prism_lab.trainers.progress import StepProgress
from prism_lab.trainers.recipe import start_run
from prism_lab.trainers.rl import train_rl

if TYPE_CHECKING:  # the harness hands every runner its context; stages never import the harness
    from prism_lab.harness.context import StageContext


def run(ctx: StageContext) -> dict:
    cfg: RLConfig = ctx.config  # type: ignore[assignment]
    env = start_run(cfg.resources)  # one process, or this rank of a torchrun run
    threads = setup_threads(cfg.threads)
    set_seed(cfg.seed)
    algo = resolve_algorithm(cfg.algorithm, cfg.algorithm_overrides)
    catalog = DataCatalog.load(ctx.input("data").path)
    if not catalog.rl:
        raise DataError(f"{ctx.input('data').path}: the data catalog names no RL parquet (field 'rl')")
    examples = read_rl_parquet(catalog.rl, image_root=catalog.image_root)
    device = env.device if env.sharded else pick_device()
    # Parameters stay float32 (AdamW state in fp32); bf16 runs use autocast (see trainers/rl.py).
    model, processor = load_policy(checkpoint_dir_of(ctx.input("policy").path), dtype=torch.float32, device=device)
    ctx.log.info("rl: %s, %d prompts, %d steps x %d prompts x n=%d, %d threads", cfg.algorithm, len(examples),
                 cfg.steps, cfg.prompts_per_step, cfg.n, threads)
    progress = StepProgress("rl", ctx.log_metrics, total=cfg.steps, enabled=env.is_main,
                            keys=("reward/mean", "acc/mean", "format/mean", "response_length/mean"))
    result = train_rl(model, processor, examples, cfg, algo, log=progress, out_dir=ctx.out_dir,
                      heartbeat=ctx.heartbeat, env=env, checkpoint_dir=checkpoint_dir_of(ctx.input("policy").path))
    if result.stopped_early:  # the wall-clock budget (max_minutes) stopped it: the result depends on the machine
        ctx.log_metrics(result.steps_done, {"truncated": 1.0})
    model.eval()
    return finish_stage(ctx.out_dir, env, policy=model, processor=processor,
                        prompting_from=checkpoint_dir_of(ctx.input("policy").path), remove=[resume_dir(ctx.out_dir)],
                        write=lambda: {"algorithm": cfg.algorithm, "num_prompts": len(examples),
                                       "processes": env.world_size, **result.summary()},
                        export_dtype=cfg.resources.export_dtype)
