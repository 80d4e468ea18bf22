"""The memory planner against a measured peak: one SFT step and one RL actor update on CPU (fp32).

    python benchmarks/perf/memory_planner_cpu.py [--preset tiny-xs] [--rows 4] [--length 512]

Each case builds a random-init tiny policy (text only, vocabulary 512), runs the product's own code
(``trainers.sft._accumulate`` + AdamW step on a padded batch; ``trainers.actor.ppo_update`` on one micro-batch of
completions sharing a prompt) once to
create the optimizer state, then measures the second step. Measured: the peak of the CPU allocator during
that step above what was allocated before it, read from torch's profiler (``profile_memory=True``: every
op's own net allocation and every free of the step, summed in the order the ops started). Planned: ``harness.memory.estimate`` for the same
settings, less what exists before the step (weights, AdamW state, the process runtime): the gradients
plus the training phase (activations and the loss's [tokens x vocab] buffers). Target: within 25%.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PRISM_LAB_WANDB", "disabled")


def allocator_peak(fn) -> float:
    """Bytes: the highest running sum of the CPU allocations and frees ``fn`` makes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # each op's own net allocation (its children's are theirs; frees outside ops are "[memory]" events)
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    now = peak = 0.0
    for e in events:
        now += e.self_cpu_memory_usage
        peak = max(peak, now)
    del torch
    return peak


def build(preset: str, seed: int = 0):
    import torch

    from prism_lab.models import build_tiny_policy, build_tokenizer
    from prism_lab.models.footprint import shape_of

    torch.manual_seed(seed)
    tok = build_tokenizer([f"count {i} red circles and add {i % 7}" for i in range(200)], vocab_size=512)
    model, processor = build_tiny_policy(preset, tok, seed=seed)
    model.float().train()
    shape = shape_of(model, preset, image_size=0, patch_size=1).to_dict()  # text only: no image tokens
    return model, processor, shape


def planned_step(kind: str, cfg: dict, shape: dict) -> float:
    from prism_lab.harness import memory as mem

    est = mem.estimate(kind, cfg, {"policy": shape}, on_gpu=False)
    before = sum(est.components[k] for k in ("policy/weights", "policy/optimizer", "process/runtime"))
    return est.peak - before


def sft_case(args) -> tuple[float, float]:
    import torch

    from prism_lab.trainers import distributed as dist_
    from prism_lab.trainers.sft import _accumulate

    model, _, shape = build(args.preset)
    vocab = shape["vocab"]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.rows, args.length), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, args.length * 3 // 4:] = 0  # a padded batch, as SFT's rows of different lengths are
    batch = {"input_ids": ids * mask, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    acc = type("OneProcess", (), {"autocast": staticmethod(contextlib.nullcontext),
                                  "backward": staticmethod(lambda loss: loss.backward())})()
    env = dist_.DistEnv()

    def step():
        opt.zero_grad(set_to_none=True)
        _accumulate(model, acc, [dict(batch)], "cpu", env)
        opt.step()

    step()  # AdamW state exists from here on, as in every step after the first
    measured = allocator_peak(step)
    cfg = {"batch_size": args.rows, "max_length": args.length, "precision": "fp32", "resources": {"processes": 1}}
    return measured, planned_step("sft", cfg, shape)


def rl_case(args) -> tuple[float, float]:
    import torch

    from prism_lab.config.algorithms import resolve_algorithm
    from prism_lab.trainers.actor import ppo_update
    from prism_lab.trainers.logprobs import make_sequence_batch

    model, _, shape = build(args.preset)
    vocab, prompt, resp = shape["vocab"], 16, args.length - 16
    g = torch.Generator().manual_seed(1)
    pb = {"input_ids": torch.randint(0, vocab, (1, prompt), generator=g), "attention_mask": torch.ones(1, prompt,
                                                                                                        dtype=torch.long)}
    comps = [torch.randint(0, vocab, (resp,), generator=g).tolist() for _ in range(args.rows)]
    batch = make_sequence_batch(pb, [0] * args.rows, comps, pad_token_id=0)
    rows = list(range(args.rows))
    old = {i: torch.zeros(resp) for i in rows}
    algo = resolve_algorithm("grpo", {"max_tokens_per_micro_batch": args.rows * args.length})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        ppo_update(model, opt, [[(rows, batch)]], old, [1.0 if i % 2 else -1.0 for i in rows], algo,
                   temperature=1.0, suppress_token_ids=[1, 2])

    step()
    measured = allocator_peak(step)
    cfg = {"prompts_per_step": 1, "n": args.rows, "max_prompt_length": prompt, "max_new_tokens": resp,
           "update_token_budget": args.rows * args.length, "log_prob_token_budget": args.rows * args.length,
           "rollout_engine": "hf", "precision": "fp32", "resources": {"processes": 1}}
    return measured, planned_step("rl", cfg, shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny-xs")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--length", type=int, default=512)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"{'case':<16}{'measured MB':>13}{'planned MB':>12}{'planned/measured':>18}")
    worst = 0.0
    for name, case in (("sft step", sft_case), ("rl actor update", rl_case)):
        measured, planned = case(args)
        ratio = planned / measured
        worst = max(worst, abs(ratio - 1))
        print(f"{name:<16}{measured / 1e6:>13.2f}{planned / 1e6:>12.2f}{ratio:>18.2f}")
    print(f"largest deviation {worst:.0%} ({'within' if worst <= 0.25 else 'OUTSIDE'} 25%)")


if __name__ == "__main__":
    main()
