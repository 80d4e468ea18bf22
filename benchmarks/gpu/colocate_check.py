"""One rank's colocated vLLM rollout on a tiny policy (run by benchmarks/gpu/check.py under torchrun, GPU only).

    torchrun --standalone --nproc_per_node N benchmarks/gpu/colocate_check.py OUT_DIR

Builds tiny-xs, saves it as the "input checkpoint", moves the policy's weights away from it (as training would),
then rolls out through prism_lab.rollout.colocate (wake weights -> sync -> wake KV cache -> generate -> sleep) and
checks that the engine sampled with the MOVED weights (FSDP2-sharded when N > 1): the policy's own log-probs of the sampled tokens against
vLLM's (max |delta| printed). Also prints the GPU memory in use with the engine awake and asleep. Rank 0 writes
``OUT_DIR/colocate.json``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def _used_gib(torch) -> float:
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


def _policy_logprobs(model, processor, prompt, token_ids, suppress) -> list[float]:
    import torch

    from prism_lab.rollout import build_prompt_inputs

    batch = {k: v.to(model.device) for k, v in build_prompt_inputs(processor, [prompt]).items()
             if isinstance(v, torch.Tensor)}
    comp = torch.tensor([token_ids], device=model.device)
    ids = torch.cat([batch["input_ids"], comp], dim=1)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0, batch["input_ids"].shape[1] - 1:-1].float()
    if suppress:
        logits[:, suppress] = float("-inf")
    return torch.log_softmax(logits, dim=-1).gather(1, comp[0].unsqueeze(1)).squeeze(1).tolist()


def main() -> int:
    import torch

    from prism_lab.config.rl import RLConfig
    from prism_lab.models import build_tiny_policy, build_tokenizer, save_policy
    from prism_lab.rollout import Prompt
    from prism_lab.rollout.colocate import make_training_engine
    from prism_lab.trainers import distributed as dist_
    from tests.fakes import counting_corpus

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    env = dist_.init_distributed()
    torch.manual_seed(0)
    model, processor = build_tiny_policy("tiny-xs", build_tokenizer(counting_corpus(), vocab_size=400), seed=0)
    ckpt = out / "input_ckpt"
    with dist_.main_first(env):
        if env.is_main:
            save_policy(model, processor, ckpt)
    model.to(env.device)
    with torch.no_grad():  # "training": the engine must roll out with these weights, not the checkpoint's
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the same draws on every rank (same seed)
    reference = copy.deepcopy(model).eval()  # unsharded, for the log-probs of the sampled tokens
    if env.sharded:  # the sync then gathers each parameter with full_tensor(), as in the RL and alignment stages
        dist_.shard_model(model, env, param_dtype=torch.float32, reduce_dtype=torch.float32, offload=False)
    cfg = RLConfig(max_prompt_length=256, max_new_tokens=16, rollout_engine="vllm", seed=0,
                   rollout_gpu_memory_utilization=0.3, resources={"processes": env.world_size})
    before = _used_gib(torch)
    engine = make_training_engine(model, processor, cfg.rollout(), checkpoint_dir=ckpt, rank=env.rank, device=env.device)
    asleep = _used_gib(torch)
    engine.engine.wake_up()
    awake = _used_gib(torch)
    engine.engine.sleep(level=1)
    prompts = [Prompt(messages=[{"role": "user", "content": f"add {i + 4 * env.rank} ."}]) for i in range(4)]
    rollouts = engine.generate(prompts, n=2, max_new_tokens=16, temperature=1.0, top_p=1.0, seed=env.rank,
                               return_logprobs=True)
    suppress = list(engine.suppress_token_ids or [])
    delta = 0.0
    for r in rollouts:
        if r.token_ids and r.logprobs:
            mine = _policy_logprobs(reference, processor, prompts[r.prompt_index], r.token_ids, suppress)
            delta = max(delta, max(abs(a - b) for a, b in zip(mine, r.logprobs)))
    res = {"rank": env.rank, "world": env.world_size, "rollouts": len(rollouts), "syncs": engine.syncs,
           "max_abs_logprob_delta": delta, "gib_before_engine": before, "gib_engine_asleep": asleep,
           "gib_engine_awake": awake}
    parts = dist_.all_gather_objects(res, env) if env.sharded else [res]
    if env.is_main:
        (out / "colocate.json").write_text(json.dumps(parts, indent=1))
    engine.close()
    dist_.finish(env)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    sys.exit(main())
