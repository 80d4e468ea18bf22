"""Time one GRPO step of prism-lab's RL trainer against TRL's GRPOTrainer on the same work.

Same tiny Qwen3-VL (built from a tiny preset with a locally trained tokenizer; nothing is
downloaded), same prompts (system prompt + one 64x64 image + a question), same group size, same
completion length, same reward function, same learning rate, one optimiser update per step, no
KL, fixed ``torch.set_num_threads``. Each side runs ``--warmup`` steps that are not timed, then
``--steps`` timed steps; per-step wall times are taken around the whole step (generation,
reward, loss, backward, optimiser). Prints min / median step time and samples/s (completions per
second) for both and the ratio ours / TRL.

    python benchmarks/perf/rl_step_vs_trl.py                      # tiny-s, 4 prompts x 8, 32 tokens
    python benchmarks/perf/rl_step_vs_trl.py --preset tiny-xs --threads 2

The random-init model almost never emits its end-of-turn token, so nearly every completion has
exactly ``--max-new-tokens`` tokens on both sides (the script prints the mean lengths).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def build(preset: str, seed: int):
    from prism_lab.models import build_tiny_policy, build_tokenizer
    from prism_lab.prompts import SYSTEM_PROMPT, format_response

    corpus = [SYSTEM_PROMPT]
    for i in range(300):
        corpus.append(f"how many red shapes are there ? add {i % 10} .")
        corpus.append(format_response(f"- a white image with {i % 6} red shapes", f"{i % 6} plus {i % 10}", str(i % 16)))
    tok = build_tokenizer(corpus, vocab_size=512)
    return build_tiny_policy(preset, tok, seed=seed)


def make_examples(num: int, seed: int):
    import numpy as np
    from PIL import Image

    from prism_lab.data.rl_parquet import RLExample
    from prism_lab.prompts import SYSTEM_PROMPT

    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(RLExample(
            index=i, data_source="mm_gad",
            prompt=[{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": f"<image>how many red shapes are there ? add {i % 10} ."}],
            images=[buf.getvalue()], ground_truth=str(i % 7), equivalent_answers=[],
        ))
    return out


def toy_reward(text: str) -> float:
    """Cheap reward with within-group variance (so advantages are non-zero on both sides)."""
    return float(sum(ch in "0123456789" for ch in text)) / max(1, len(text))


def run_ours(args, examples) -> tuple[list[float], float]:
    from prism_lab.config.rl import RLConfig
    from prism_lab.rewards import RewardResult
    from prism_lab.trainers.rl import train_rl

    model, proc = build(args.preset, args.seed)

    def score_fn(text, gt, eq=(), acc_weight=0.8, format_weight=0.2):
        r = toy_reward(text)
        return RewardResult(r, r, 0.0)

    cfg = RLConfig(algorithm="grpo", algorithm_overrides={"lr": args.lr}, steps=args.warmup + args.steps,
                   prompts_per_step=args.prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                   micro_batch_size=args.prompts * args.n, temperature=1.0, top_p=1.0, seed=args.seed,
                   rollout_engine="hf", save_every=10**6)
    stamps: list[tuple[float, float]] = [(time.perf_counter(), time.process_time())]
    lengths: list[float] = []
    parts: list[tuple[float, float]] = []

    def log(step, m):
        stamps.append((time.perf_counter(), time.process_time()))
        lengths.append(m["response_length/mean"])
        parts.append((m["time/generate"], m["time/train"]))

    train_rl(model, proc, examples, cfg, score_fn=score_fn, log=log)
    wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])][args.warmup:]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:])][args.warmup:]
    gen = statistics.median(p[0] for p in parts[args.warmup:])
    train = statistics.median(p[1] for p in parts[args.warmup:])
    print(f"ours: median time/generate {gen:.3f}s, time/train {train:.3f}s", flush=True)
    return wall, cpu, statistics.mean(lengths[args.warmup:])


def run_trl(args, examples) -> tuple[list[float], float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    model, proc = build(args.preset, args.seed)
    rows = []
    for ex in examples:
        sys_msg, user = ex.prompt
        q = user["content"].replace("<image>", "")
        rows.append({
            "prompt": [{"role": "system", "content": [{"type": "text", "text": sys_msg["content"]}]},
                       {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            "image": ex.load_images()[0],
        })
    ds = Dataset.from_list(rows)

    def reward_fn(completions, **kw):
        out = []
        for c in completions:
            text = c[0]["content"] if isinstance(c, list) else c
            out.append(toy_reward(text))
        return out

    class Timer(TrainerCallback):
        def __init__(self):
            self.t0 = self.c0 = 0.0
            self.times: list[float] = []
            self.cpu: list[float] = []

        def on_step_begin(self, a, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

    timer = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        targs = GRPOConfig(
            output_dir=tmp, use_cpu=True, bf16=False, report_to="none",
            per_device_train_batch_size=args.prompts * args.n, gradient_accumulation_steps=1,
            num_generations=args.n, max_completion_length=args.max_new_tokens,
            max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", learning_rate=args.lr,
            beta=0.0, loss_type="dapo", importance_sampling_level="token", temperature=1.0, top_p=1.0,
            seed=args.seed, dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=[reward_fn], args=targs, train_dataset=ds,
                              processing_class=proc, callbacks=[timer])
        lengths: list[float] = []
        orig_log = trainer.log

        def log_hook(logs, *a, **kw):
            vals = trainer._metrics.get("train", {}).get("completions/mean_length")
            if vals:
                lengths.append(float(statistics.mean(vals)))
            return orig_log(logs, *a, **kw)

        trainer.log = log_hook
        trainer.train()
        mean_len = statistics.mean(lengths[args.warmup:]) if len(lengths) > args.warmup else float("nan")
    return timer.times[args.warmup:], timer.cpu[args.warmup:], mean_len


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny-s")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--n", type=int, default=8, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["ours", "trl"], default=None)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    examples = make_examples(args.prompts * (args.warmup + args.steps), args.seed)
    samples = args.prompts * args.n
    results = {}
    for name, fn in (("ours", run_ours), ("trl", run_trl)):
        if args.only and name != args.only:
            continue
        times, cpu, mean_len = fn(args, examples)
        results[name] = (times, cpu, mean_len)
        print(f"{name:5s} wall step min {min(times):.3f}s median {statistics.median(times):.3f}s | "
              f"cpu step min {min(cpu):.3f}s median {statistics.median(cpu):.3f}s | "
              f"samples/s (wall median) {samples / statistics.median(times):6.1f} | "
              f"mean completion length {mean_len:.1f}", flush=True)
    if len(results) == 2:
        med = {k: samples / statistics.median(v[0]) for k, v in results.items()}
        best = {k: samples / min(v[0]) for k, v in results.items()}
        cpu = {k: samples / statistics.median(v[1]) for k, v in results.items()}
        print(f"throughput ratio ours/TRL: {med['ours'] / med['trl']:.2f}x (wall, median step), "
              f"{best['ours'] / best['trl']:.2f}x (wall, fastest step), {cpu['ours'] / cpu['trl']:.2f}x (process CPU "
              f"time, median)  [preset {args.preset}, {args.prompts} prompts x {args.n}, {args.max_new_tokens} new "
              f"tokens, {args.threads} thread(s), {args.steps} timed steps after {args.warmup} warmup]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
