"""One RL step of the paper's shapes, prism-lab against TRL's GRPOTrainer in colocate mode, as a ratio of tokens/s.

    python benchmarks/gpu/rl_throughput.py [--policy 2b] [--prompts-per-gpu 4] [--n 16] [--max-new-tokens 8192]
    python benchmarks/gpu/rl_throughput.py --max-new-tokens 1024          # a shorter run (minutes, not tens)

GPU only. Needs vLLM (``pip install -e ".[gpu]"``) and TRL (``pip install -c constraints/core.txt trl``; it is
in the ``test`` extra, never in the core install); without them or without a CUDA device it prints one line
and exits 2, having run nothing.

The paper's RL step (experiments/paper.yaml: 32 prompts x 16 rollouts on 8 GPUs, prompt cap 2048, responses
up to 8192) scaled to the GPUs here: ``--prompts-per-gpu`` (4 = 32 / 8) prompts per GPU, the same group size
and lengths. Both sides get the same random-init policy (saved once as a bf16 checkpoint: ``--policy tiny``,
``2b`` or ``4b`` dimensions with the test tokenizer's small vocabulary; nothing from the hub), the same prompts
(the synthetic counting task, text only), the same toy reward (benchmarks/perf/rl_step_vs_trl.py), lr 1e-6,
no KL, temperature 1, one optimizer step per RL step, every process holding a colocated vLLM engine at
``--util`` of its GPU with sleep mode, bf16 compute with fp32 master weights, gradient checkpointing. Ours:
``prism_lab.trainers.rl.train_rl`` under torchrun (FSDP2, token-budget micro-batches of one full sequence).
TRL: ``GRPOTrainer`` under torchrun (``use_vllm``, ``vllm_mode="colocate"``, one sequence per micro-batch,
gradient accumulation over the step's rollouts, one generation per optimizer step). Each side runs
``--warmup`` untimed steps (engine start-up, compilation) then ``--steps`` timed ones.
Tokens per second: the step's completion tokens (mean completion length x prompts x n) over its wall time.
A random-init policy rarely ends its answer, so completions run to the cap on both sides (lengths printed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu.rows import base_env, log_error, run_process, torchrun  # noqa: E402

HERE = Path(__file__).resolve()
MAX_PROMPT = 2048  # the paper's prompt cap (RLConfig's default)
LR = 1e-6


def missing_requirements() -> list[str]:
    """What this machine lacks to run the comparison, each with how to get it ([] when nothing)."""
    import importlib.util

    out = []
    if importlib.util.find_spec("trl") is None:
        out.append("trl (pip install -c constraints/core.txt trl)")
    if importlib.util.find_spec("vllm") is None:
        out.append("vllm (pip install -e '.[gpu]')")
    import torch

    if not torch.cuda.is_available():
        out.append("a CUDA GPU (none visible)")
    return out


def ours_config(args, world: int):
    """prism-lab's RLConfig of the step (validated: a renamed field fails here, on CPU too)."""
    from prism_lab.config.rl import RLConfig

    return RLConfig(algorithm="grpo", algorithm_overrides={"lr": LR, "max_tokens_per_micro_batch": MAX_PROMPT + args.max_new_tokens},
                    steps=args.warmup + args.steps, prompts_per_step=args.prompts_per_gpu * world, n=args.n,
                    max_prompt_length=MAX_PROMPT, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0,
                    seed=0, save_every=10**6, rollout_engine="vllm", rollout_gpu_memory_utilization=args.util,
                    precision="bf16", resources={"processes": world, "gpus": world, "param_dtype": "bf16",
                                                 "gradient_checkpointing": True})


def trl_config_kwargs(args, world: int, out_dir: str) -> dict:
    """``trl.GRPOConfig`` keyword arguments of the same step (the test checks the names against TRL's fields)."""
    rows = args.prompts_per_gpu * world * args.n
    accum = rows // world  # one sequence per micro-batch, every rollout of the step in one optimizer step
    return dict(output_dir=out_dir, bf16=True, report_to="none", save_strategy="no", logging_steps=1, seed=0,
                use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=args.util,
                vllm_enable_sleep_mode=True, vllm_max_model_length=MAX_PROMPT + args.max_new_tokens,
                per_device_train_batch_size=1, gradient_accumulation_steps=accum, steps_per_generation=accum,
                num_generations=args.n, max_completion_length=args.max_new_tokens, max_steps=args.warmup + args.steps,
                learning_rate=LR, beta=0.0, temperature=1.0, top_p=1.0, gradient_checkpointing=True,
                dataloader_num_workers=0, disable_tqdm=True)


def questions(count: int) -> list[str]:
    return [f"how many red shapes are there ? add {i % 10} ." for i in range(count)]


def prepare(args, out: Path, world: int) -> dict:
    """Save the policy checkpoint (bf16) both sides load; returns the spec the workers read."""
    import torch

    from benchmarks.gpu.colocate_check import policy_preset
    from benchmarks.perf.rl_step_vs_trl import build
    from prism_lab.models import save_policy

    preset = policy_preset(args.policy)
    with torch.device("cuda"):
        model, proc = build(preset, 0)
    ckpt = save_policy(model, proc, out / "policy", dtype=torch.bfloat16)
    del model
    torch.cuda.empty_cache()
    prompts = args.prompts_per_gpu * world * (args.warmup + args.steps)
    spec = {"args": vars(args) | {"out": str(out)}, "world": world, "checkpoint": str(ckpt),
            "questions": questions(prompts)}
    (out / "spec.json").write_text(json.dumps(spec))
    return spec


def _write(out: Path, name: str, times: list[float], lengths: list[float], rows: int) -> None:
    (out / f"{name}.json").write_text(json.dumps({"times": times, "lengths": lengths, "rows": rows}))


def worker_ours(spec: dict) -> None:
    import torch

    from benchmarks.perf.rl_step_vs_trl import toy_reward
    from prism_lab.data.rl_parquet import RLExample
    from prism_lab.models import load_policy
    from prism_lab.models.attention import choose_attn_implementation
    from prism_lab.prompts import SYSTEM_PROMPT
    from prism_lab.rewards import RewardResult
    from prism_lab.trainers.recipe import start_run
    from prism_lab.trainers.rl import train_rl

    args = argparse.Namespace(**spec["args"])
    cfg = ours_config(args, spec["world"])
    env = start_run(cfg.resources)
    model, proc = load_policy(spec["checkpoint"], dtype=torch.float32, device=env.device,
                              attn_implementation=choose_attn_implementation("cuda"))
    examples = [RLExample(index=i, data_source="throughput", images=[], ground_truth="0", equivalent_answers=[],
                          prompt=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}])
                for i, q in enumerate(spec["questions"])]

    def score(text, gt, eq=(), acc_weight=0.8, format_weight=0.2):
        r = toy_reward(text)
        return RewardResult(r, r, 0.0)

    stamps, lengths = [time.perf_counter()], []

    def log(step, metrics):
        stamps.append(time.perf_counter())
        lengths.append(float(metrics.get("response_length/mean", float("nan"))))

    train_rl(model, proc, examples, cfg, log=log, env=env, score_fn=score, checkpoint_dir=spec["checkpoint"])
    if env.is_main:
        times = [b - a for a, b in zip(stamps, stamps[1:])]
        _write(Path(args.out), "ours", times[args.warmup:], lengths[args.warmup:], cfg.prompts_per_step * cfg.n)


def worker_trl(spec: dict) -> None:
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from benchmarks.perf.rl_step_vs_trl import toy_reward
    from prism_lab.models.attention import choose_attn_implementation
    from prism_lab.prompts import SYSTEM_PROMPT

    args = argparse.Namespace(**spec["args"])
    out = Path(args.out)
    model = AutoModelForImageTextToText.from_pretrained(spec["checkpoint"], dtype="float32",
                                                        attn_implementation=choose_attn_implementation("cuda"))
    proc = AutoProcessor.from_pretrained(spec["checkpoint"])
    ds = Dataset.from_list([{"prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": q}]}
                            for q in spec["questions"]])

    def reward(completions, **kw):
        return [toy_reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    class Timer(TrainerCallback):
        """Wall time of each optimizer step (its generation included) and the logged mean completion length."""

        def __init__(self) -> None:
            self.t0, self.times, self.lengths = 0.0, [], []

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    timer = Timer()
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=GRPOConfig(**trl_config_kwargs(
        args, spec["world"], str(out / "trl_out"))), train_dataset=ds, processing_class=proc, callbacks=[timer])
    trainer.train()
    if trainer.accelerator.is_main_process:
        _write(out, "trl", timer.times[args.warmup:], timer.lengths[args.warmup:],
               args.prompts_per_gpu * spec["world"] * args.n)


def tokens_per_s(res: dict) -> tuple[float, float]:
    """(completion tokens/s of the median timed step, mean completion length)."""
    length = statistics.mean(res["lengths"]) if res["lengths"] else float("nan")
    return length * res["rows"] / statistics.median(res["times"]), length


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", choices=["tiny", "2b", "4b"], default="2b")
    ap.add_argument("--prompts-per-gpu", type=int, default=4)
    ap.add_argument("--n", type=int, default=16, help="rollouts per prompt (the group)")
    ap.add_argument("--max-new-tokens", type=int, default=8192)
    ap.add_argument("--util", type=float, default=0.3, help="each engine's gpu_memory_utilization")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per side")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        spec = json.loads((args.out / "spec.json").read_text())
        (worker_ours if args.worker == "ours" else worker_trl)(spec)
        return 0
    if (missing := missing_requirements()):
        print(f"rl_throughput.py: missing {'; '.join(missing)}: nothing was run (GPU only)", file=sys.stderr)
        return 2
    import tempfile

    import torch

    out = args.out or Path(tempfile.mkdtemp(prefix="prism_rl_throughput_"))
    out.mkdir(parents=True, exist_ok=True)
    world = torch.cuda.device_count()
    prepare(args, out, world)
    print(f"{world} x {torch.cuda.get_device_name(0)}; policy {args.policy}; {args.prompts_per_gpu * world} prompts x "
          f"{args.n}, prompt cap {MAX_PROMPT}, responses up to {args.max_new_tokens}; logs in {out}", flush=True)
    env = base_env({"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    results = {}
    for side in ("ours", "trl"):
        log = out / f"{side}.log"
        rc, secs = run_process(torchrun(world, HERE, "--worker", side, "--out", str(out)), log, args.timeout, env)
        if rc != 0 or not (out / f"{side}.json").is_file():
            print(f"{side:5s} failed after {secs:.0f} s: {log_error(log)} (log {log})", flush=True)
            continue
        results[side] = json.loads((out / f"{side}.json").read_text())
        tps, length = tokens_per_s(results[side])
        print(f"{side:5s} step {statistics.median(results[side]['times']):.1f} s, {tps:,.0f} completion tokens/s, "
              f"mean completion length {length:.0f}", flush=True)
    if len(results) < 2:
        return 1
    ratio = tokens_per_s(results["ours"])[0] / tokens_per_s(results["trl"])[0]
    print(f"tokens/s ratio prism-lab / TRL GRPOTrainer (colocate): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
