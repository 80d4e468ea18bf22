"""Measurement (not a test): does a short RL run raise the reward of a policy that knows some of the task?

For each preset, starting from the same checkpoint (e.g. an SFT stage's ``<artifact>/model``) and
the RL parquet of a `data` artifact, run ``--steps`` RL steps and report

- the mean training reward of the first and of the last ``--window`` steps (sampled at T=1), and
- the mean reward / accuracy / format of ``--eval-n`` samples (T=1, fixed seed) on ``--eval-prompts``
  held-out prompts (the last ones of the parquet, never trained on), before and after.

    python benchmarks/perf/rl_reward_gain.py --policy RUNS/sft/<key>/model --data RUNS/data/<key>

Learning rates for the tiny CPU models are far above the paper's 1e-6 (set with --lr).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def evaluate(model, proc, examples, *, n: int, max_new_tokens: int, seed: int) -> dict[str, float]:
    from prism_lab.rollout import Prompt, make_engine
    from prism_lab.trainers.rl import score_rollouts

    eng = make_engine(model, proc, "hf")
    prompts = [Prompt(list(e.prompt), e.load_images()) for e in examples]
    outs = eng.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed, batch_size=128)
    sc = score_rollouts(outs, examples)
    return {"reward": statistics.mean(s[0] for s in sc), "acc": statistics.mean(s[2] for s in sc),
            "format": statistics.mean(s[3] for s in sc)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policy", required=True, help="checkpoint directory (config.json + safetensors)")
    p.add_argument("--data", required=True, help="a `data` artifact directory (catalog.json)")
    p.add_argument("--presets", default="grpo,dapo,gspo")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eval-prompts", type=int, default=48)
    p.add_argument("--eval-n", type=int, default=4)
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import torch

    from prism_lab.config.rl import RLConfig
    from prism_lab.data.catalog import DataCatalog
    from prism_lab.data.rl_parquet import read_rl_parquet
    from prism_lab.models import load_policy
    from prism_lab.trainers.rl import train_rl

    torch.set_num_threads(args.threads)
    cat = DataCatalog.load(args.data)
    examples = read_rl_parquet(cat.rl, image_root=cat.image_root)
    train, held_out = examples[: -args.eval_prompts], examples[-args.eval_prompts :]
    ev = dict(n=args.eval_n, max_new_tokens=args.max_new_tokens, seed=args.seed + 1)
    model, proc = load_policy(args.policy)
    base = evaluate(model, proc, held_out, **ev)
    print(f"start checkpoint, held-out ({len(held_out)} prompts x {args.eval_n}): "
          + ", ".join(f"{k} {v:.3f}" for k, v in base.items()), flush=True)
    overrides = {
        "grpo": {},
        "dapo": {"overlong_buffer.len_ratio": 0.5, "filter_groups.gen_batch_multiplier": 2.0},
        "gspo": {},
    }
    for preset in args.presets.split(","):
        model, proc = load_policy(args.policy)
        cfg = RLConfig(algorithm=preset, algorithm_overrides={"lr": args.lr, **overrides.get(preset, {})},
                       steps=args.steps, prompts_per_step=args.prompts_per_step, n=args.n,
                       max_new_tokens=args.max_new_tokens, micro_batch_size=args.n * 2, seed=args.seed,
                       save_every=10**6)
        t0 = time.perf_counter()
        res = train_rl(model, proc, train, cfg)
        wall = time.perf_counter() - t0
        rewards = [m["reward/mean"] for m in res.history]
        w = args.window
        after = evaluate(model, proc, held_out, **ev)
        print(f"{preset:5s} {args.steps} steps in {wall:.0f}s | training reward first {w} steps "
              f"{statistics.mean(rewards[:w]):.3f} -> last {w} steps {statistics.mean(rewards[-w:]):.3f} | held-out "
              + ", ".join(f"{k} {base[k]:.3f}->{after[k]:.3f}" for k in after), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
