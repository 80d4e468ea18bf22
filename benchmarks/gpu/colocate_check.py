"""One rank's colocated vLLM rollout and training step (run by benchmarks/gpu/check.py under torchrun, GPU only).

    torchrun --standalone --nproc_per_node N benchmarks/gpu/colocate_check.py OUT_DIR [--policy tiny|2b] [--util 0.3]

Builds a random-init policy on the GPU (``tiny``: tiny-xs; ``2b``: Qwen3-VL-2B's dimensions with the test
tokenizer's small vocabulary; nothing comes from the hub), saves it in bf16 as the stage's "input checkpoint",
then moves the policy's weights away from it (as training would) and FSDP2-shards it when N > 1. Through
prism_lab.rollout.colocate (wake weights -> sync -> wake KV cache -> generate -> sleep) each rank rolls out its
own prompts; the policy's own log-probs of the sampled tokens (prism_lab.trainers.logprobs, one padded
forward per rank) against vLLM's give the max |delta| (a sync that did not happen shows as a large delta).
Then one training step (the completions' mean log-likelihood, backward, AdamW) runs twice: with the engine
asleep (sleep mode) and with it awake (what a run without sleep mode keeps). Peak GPU memory of a step: the
device's used memory before it plus the growth of torch's reserved memory during it. Rank 0 writes
``OUT_DIR/colocate.json`` (one record per rank).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

#: Prompts per rank and samples per prompt, prompt and response caps of the check.
PROMPTS, SAMPLES, MAX_PROMPT, MAX_NEW = 4, 2, 256, 16
TOKENIZER_VOCAB = 400


#: Policies by name: a tiny preset, or a hub model's dimensions built at random (no download).
POLICIES = {"tiny": "tiny-xs", "2b": "qwen3-vl-2b", "4b": "qwen3-vl-4b"}


def policy_preset(name: str):
    """The ModelPreset a policy name builds: ``tiny`` (tiny-xs), or ``2b`` / ``4b``: Qwen3-VL-2B / 4B's dimensions
    as a random-init preset with the test tokenizer's small vocabulary."""
    from prism_lab.models.presets import PRESETS

    if name not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {name!r}")
    preset = PRESETS.get(POLICIES[name])
    if preset.family == "tiny":
        return preset
    return dataclasses.replace(preset, name=f"{preset.name}-shaped", family="tiny", hub_id=None,
                               description=f"{preset.name}'s dimensions, random init, small test vocabulary")


def tokenizer():
    from prism_lab.models import build_tokenizer
    from tests.fakes import counting_corpus

    return build_tokenizer(counting_corpus(), vocab_size=TOKENIZER_VOCAB)


def _used_gb(torch) -> float:
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 1e9


def _step_peak_gb(torch, model, opt, batch, suppress) -> float:
    """Peak device memory (GB) of one training step on ``batch``."""
    from prism_lab.trainers.logprobs import completion_logprobs

    used0 = _used_gb(torch)
    torch.cuda.reset_peak_memory_stats()
    reserved0 = torch.cuda.memory_reserved()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logp, _ = completion_logprobs(model, batch, suppress_token_ids=suppress)
    loss = -logp.sum() / batch.response_mask.sum().clamp(min=1)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return used0 + (torch.cuda.max_memory_reserved() - reserved0) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--policy", choices=["tiny", "2b"], default="tiny")
    ap.add_argument("--util", type=float, default=0.3, help="the engine's gpu_memory_utilization")
    args = ap.parse_args(argv)
    import torch

    from prism_lab.config.rl import RLConfig
    from prism_lab.models import build_tiny_policy, save_policy
    from prism_lab.models.attention import choose_attn_implementation
    from prism_lab.rollout import Prompt, build_prompt_inputs
    from prism_lab.rollout.colocate import make_training_engine
    from prism_lab.rollout.inputs import pad_token_id
    from prism_lab.trainers import distributed as dist_
    from prism_lab.trainers.logprobs import completion_logprobs, make_sequence_batch

    args.out.mkdir(parents=True, exist_ok=True)
    env = dist_.init_distributed()
    with torch.device(env.device):
        model, processor = build_tiny_policy(policy_preset(args.policy), tokenizer(), seed=0,
                                             attn_implementation=choose_attn_implementation("cuda"))
    ckpt = args.out / "input_ckpt"
    with dist_.main_first(env):
        if env.is_main:
            save_policy(model, processor, ckpt, dtype=torch.bfloat16)
    torch.manual_seed(1)  # "training": the engine must roll out with these weights, not the checkpoint's
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the same draws on every rank
    if env.sharded:  # the sync then gathers each parameter with full_tensor(), as in the RL and alignment stages
        dist_.shard_model(model, env, param_dtype=torch.bfloat16, reduce_dtype=torch.float32, offload=False)
    cfg = RLConfig(max_prompt_length=MAX_PROMPT, max_new_tokens=MAX_NEW, rollout_engine="vllm", seed=0,
                   rollout_gpu_memory_utilization=args.util, resources={"processes": env.world_size})
    before = _used_gb(torch)
    engine = make_training_engine(model, processor, cfg.rollout(), checkpoint_dir=ckpt, rank=env.rank,
                                  device=env.device)
    asleep = _used_gb(torch)
    prompts = [Prompt(messages=[{"role": "user", "content": f"add {i + PROMPTS * env.rank} ."}])
               for i in range(PROMPTS)]
    rollouts = engine.generate(prompts, n=SAMPLES, max_new_tokens=MAX_NEW, temperature=1.0, top_p=1.0,
                               seed=env.rank, return_logprobs=True)
    rollouts = [r for r in rollouts if r.token_ids]
    suppress = list(engine.suppress_token_ids or [])
    pb = {k: v.to(env.device) for k, v in build_prompt_inputs(processor, prompts).items()
          if isinstance(v, torch.Tensor)}
    batch = make_sequence_batch(pb, [r.prompt_index for r in rollouts], [r.token_ids for r in rollouts],
                                pad_token_id=pad_token_id(model, processor))
    with torch.no_grad():
        mine, _ = completion_logprobs(model, batch, suppress_token_ids=suppress)
    delta = max((abs(float(mine[i, t]) - lp) for i, r in enumerate(rollouts) for t, lp in enumerate(r.logprobs or [])),
                default=float("nan"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    step_asleep = _step_peak_gb(torch, model, opt, batch, suppress)
    engine.engine.wake_up()  # weights and KV cache: the memory a run without sleep mode keeps while training
    awake = _used_gb(torch)
    step_awake = _step_peak_gb(torch, model, opt, batch, suppress)
    engine.engine.sleep(level=1)
    res = {"rank": env.rank, "world": env.world_size, "policy": args.policy,
           "params": sum(p.numel() for p in model.parameters()), "rollouts": len(rollouts), "syncs": engine.syncs,
           "max_abs_logprob_delta": delta, "gb_before_engine": before, "gb_engine_asleep": asleep,
           "gb_engine_awake": awake, "gb_step_asleep": step_asleep, "gb_step_awake": step_awake}
    parts = dist_.all_gather_objects(res, env) if env.sharded else [res]
    if env.is_main:
        (args.out / "colocate.json").write_text(json.dumps(parts, indent=1))
    engine.close()
    dist_.finish(env)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    sys.exit(main())
