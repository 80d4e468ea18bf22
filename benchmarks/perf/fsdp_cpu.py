"""SFT steps per second and peak memory per process: 1 process vs 2 FSDP2 processes on CPU (gloo).

    python benchmarks/perf/fsdp_cpu.py [--preset tiny-s] [--steps 30] [--batch 8] [--cores 2]

Both runs train the same model on the same global batch (``--batch`` rows per step, split over the
ranks in the 2-process run) with the product's SFT loop (``train_sft``), and share the same number of
cores: 1 process x ``cores`` threads against 2 processes x ``cores/2`` threads. Steps per second are
measured after the first 5 steps (start-up and first-step allocations excluded); peak RSS is each
process's ``ru_maxrss``. There is no target: the numbers say what sharding costs or saves on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PRISM_LAB_WANDB", "disabled")
WARMUP_STEPS = 5


class Row:
    """One in-memory SFT example: a counting question over a random 32x32 image."""

    def __init__(self, i: int) -> None:
        self.row, self.source = i, "bench"
        self.messages = [{"role": "user", "content": f"<image>how many red circles are there ? add {i % 10} ."},
                         {"role": "assistant", "content": f"<answer>{i % 7}</answer>"}]

    def load_images(self):
        import numpy as np
        from PIL import Image

        return [Image.fromarray(np.random.default_rng(self.row).integers(0, 255, (32, 32, 3), dtype=np.uint8))]


def worker(args: argparse.Namespace) -> None:
    """One rank (run by torchrun): train, then write this rank's timings and peak RSS."""
    import torch

    from prism_lab.config.sft import SFTConfig
    from prism_lab.models import build_tiny_policy, build_tokenizer
    from prism_lab.trainers import distributed as dist_
    from prism_lab.trainers.sft import train_sft
    from prism_lab.prompts import SYSTEM_PROMPT

    world = dist_.env_world_size()
    torch.manual_seed(0)
    model, processor = build_tiny_policy(args.preset, build_tokenizer(
        [SYSTEM_PROMPT] + [m["content"] for i in range(50) for m in Row(i).messages], vocab_size=400), seed=0)
    cfg = SFTConfig(model=args.preset, lr=1e-3, batch_size=args.batch, grad_accum=1, max_steps=args.steps,
                    epochs=1000.0, warmup_ratio=0.0, max_length=256, save_every=10**6, log_every=10**6,
                    threads=max(1, args.cores // world), seed=0, resources={"processes": world})
    stamps: list[float] = []
    train_sft(model, processor, [Row(i) for i in range(256)], cfg, progress=False,
              on_step=lambda step, _v: stamps.append(time.perf_counter()))
    env = dist_.init_distributed(world)
    timed = stamps[WARMUP_STEPS:]
    rec = {"rank": env.rank, "world": world, "threads": cfg.threads,
           "steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]),
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(args.out, f"rank{env.rank}.json").write_text(json.dumps(rec))
    dist_.finish(env)


def run(nproc: int, args: argparse.Namespace) -> list[dict]:
    out = Path(tempfile.mkdtemp(prefix=f"fsdp_cpu_{nproc}_"))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(max(1, args.cores // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
           "--worker", "--out", str(out), "--preset", args.preset, "--steps", str(args.steps),
           "--batch", str(args.batch), "--cores", str(args.cores)]
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(nproc)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-s")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8, help="Global batch (rows per optimizer step).")
    ap.add_argument("--cores", type=int, default=2, help="Cores both runs share out among their processes.")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    results = {n: run(n, args) for n in (1, 2)}
    print(f"SFT {args.preset}, global batch {args.batch}, {args.steps} steps ({WARMUP_STEPS} excluded), "
          f"{args.cores} cores shared out")
    print(f"{'processes':>9} {'threads/proc':>12} {'steps/s':>8} {'peak RSS/proc (MiB)':>20}")
    for n, recs in results.items():
        rss = "/".join(f"{r['peak_rss_mib']:.0f}" for r in sorted(recs, key=lambda r: r["rank"]))
        print(f"{n:>9} {recs[0]['threads']:>12} {min(r['steps_per_s'] for r in recs):>8.2f} {rss:>20}")
    s1, s2 = results[1][0]["steps_per_s"], min(r["steps_per_s"] for r in results[2])
    m1, m2 = results[1][0]["peak_rss_mib"], max(r["peak_rss_mib"] for r in results[2])
    print(f"ratio 2 processes / 1 process: steps/s {s2 / s1:.2f}x, peak RSS per process {m2 / m1:.2f}x")


if __name__ == "__main__":
    main()
