"""Which kernels the math libraries pick changes the bits of a training run, and what pinning them would cost.

    python benchmarks/perf/kernel_choice.py [--steps 200] [--repeats 2]

Trains one small MLP (AdamW, 1 thread, seed 0) in a fresh process per variant: torch's own SIMD dispatch
(``ATEN_CPU_CAPABILITY``) at the machine's level or at ``default`` (no SIMD), and MKL's code branch
(``MKL_CBWR``) automatic or ``COMPATIBLE`` (SSE2, the one branch MKL promises to give the same bits on every
x86 CPU). Prints each variant's dispatch level, a hash of its final weights and its seconds per step.

The same variant repeated gives the same hash: one kind of machine reproduces a run bitwise. Different
variants give different hashes: that is what another CPU model or SIMD level does to the same code, seed
and settings, and why each run records the machine it ran on (``prism_lab/harness/machine.py``,
docs/cpu_notes.md §15).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

VARIANTS = {
    "native": {},
    "torch SIMD off": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "both": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"},
}

CHILD = r"""
import hashlib, sys, time
import torch
steps = int(sys.argv[1])
torch.manual_seed(0); torch.set_num_threads(1)
m = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.LayerNorm(512), torch.nn.Linear(512, 64))
opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
x, y = torch.randn(64, 256), torch.randn(64, 64)
t0 = time.perf_counter()
for _ in range(steps):
    loss = torch.nn.functional.mse_loss(m(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
dt = (time.perf_counter() - t0) / steps
w = torch.cat([p.detach().flatten() for p in m.parameters()])
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(w.numpy().tobytes()).hexdigest()[:12], f"{dt:.5f}")
"""


def run_variant(env: dict[str, str], steps: int) -> tuple[str, str, float]:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    out = subprocess.run([sys.executable, "-c", CHILD, str(steps)], env=full, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], out[1], float(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="AdamW steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant (alternating), to show repeatability")
    args = ap.parse_args()
    results: dict[str, list[tuple[str, str, float]]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, env in VARIANTS.items():
            results[name].append(run_variant(env, args.steps))
    base = min(r[2] for r in results["native"])
    print("| variant | torch dispatch | weight hash per run | s/step (best) | time vs native |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        best = min(r[2] for r in runs)
        print(f"| {name} | {runs[0][0]} | {' '.join(r[1] for r in runs)} | {best:.5f} | {best / base:.2f} |")


if __name__ == "__main__":
    main()
