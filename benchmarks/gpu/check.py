"""GPU check: the smoke grid in bf16 on one GPU, a 2-GPU FSDP step, and the vLLM rollout engine.

    python benchmarks/gpu/check.py [--out DIR] [--timeout 1800]

For a machine with CUDA (run it from the repository root in the environment prism-lab is installed
in; `pip install -e ".[gpu]"` adds vLLM and flash-attn). Prints one line per check:

    PASS|FAIL|SKIP  <check>  <figures or reason>

* ``cuda``: devices, memory, bf16 support and the attention kernel the models will use (sdpa or
  flash_attention_2).
* ``smoke-grid``: ``experiments/smoke.yaml`` with every training stage on GPU 0 in bf16 (resources
  gpus 1, param_dtype bf16) through ``prism-lab sweep run --gpus 0``; reports the wall time and the
  device and precision the SFT run recorded.
* ``fsdp-2gpu`` (2 GPUs or more): ``tests/dist/worker.py`` trains tiny-xs SFT for 4 steps on 1 GPU and
  on 2 GPUs under torchrun (NCCL, bf16 compute), gathers both into HF checkpoints and reports the
  largest weight difference between them (bf16: expect about 1e-3, not 0).
* ``fsdp-rl-2gpu`` (2 GPUs or more): the same for 2 RL steps (2 ranks roll out their prompts).
* ``vllm`` (vllm importable): a tiny-xs checkpoint served by the vLLM engine generates 4 prompts x 2.
* ``vllm-colocated`` (vllm importable): ``benchmarks/gpu/colocate_check.py`` under torchrun on 1 GPU and (2 GPUs
  or more) on every GPU: one colocated engine per rank built from a tiny-xs checkpoint, synced from moved
  weights, rolls out through prism_lab.rollout.colocate; reports the max |log-prob delta| between vLLM and the
  policy on the sampled tokens (a sync that did not happen shows as a large delta) and the GPU memory used
  with the engine asleep and awake.
Logs of every check go to ``--out``. Exit code: 0 when nothing failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def line(status: str, check: str, detail: str) -> bool:
    print(f"{status:<5} {check:<13} {detail}", flush=True)
    return status != "FAIL"


def sh(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    t0 = time.time()
    with open(log, "w") as fh:
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout,
                                env={**os.environ, "PYTHONPATH": str(REPO), "PRISM_LAB_WANDB": "disabled",
                                     **(env or {})}).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return rc, time.time() - t0


def check_cuda() -> tuple[bool, int]:
    import torch

    from prism_lab.models.attention import choose_attn_implementation

    if not torch.cuda.is_available():
        line("FAIL", "cuda", f"torch {torch.__version__}: no CUDA device visible")
        return False, 0
    n = torch.cuda.device_count()
    names = ", ".join(f"{torch.cuda.get_device_name(i)} {torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB"
                      for i in range(n))
    line("PASS", "cuda", f"{n} GPU(s): {names}; bf16 {torch.cuda.is_bf16_supported()}; attention "
         f"{choose_attn_implementation('cuda')}; torch {torch.__version__} CUDA {torch.version.cuda}")
    return True, n


def check_smoke(out: Path, timeout: float) -> bool:
    grid = out / "smoke_gpu.yaml"
    gpu = "{gpus: 1, processes: 1, param_dtype: bf16}"
    grid.write_text(f"extends: {REPO / 'experiments' / 'smoke.yaml'}\nname: smoke-gpu\nstages:\n"
                    + "".join(f"  {k}:\n    resources: {gpu}\n" for k in ("sft", "disc_warmup", "align", "rl")))
    root = out / "smoke_root"
    rc, dt = sh([sys.executable, "-m", "prism_lab.cli", "sweep", "run", str(grid), "--root", str(root), "--gpus", "0",
                 "-q"], out / "smoke.log", timeout)
    if rc != 0:
        return line("FAIL", "smoke-grid", f"sweep run exited {rc} after {dt:.0f} s; see {out / 'smoke.log'}")
    runs = [json.loads(p.read_text()) for p in (root / "runs" / "sft").glob("*/run.json")]
    summary = runs[0]["summary"] if runs else {}
    return line("PASS", "smoke-grid", f"{dt:.0f} s; sft on {summary.get('device')} with mixed precision "
                f"{summary.get('mixed_precision')}, {summary.get('samples_per_s', 0):.0f} samples/s")


def _max_diff(a_dir: Path, b_dir: Path) -> float:
    from safetensors.torch import load_file

    a, b = load_file(str(a_dir / "weights.safetensors")), load_file(str(b_dir / "weights.safetensors"))
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def check_fsdp(out: Path, mode: str, timeout: float) -> bool:
    name = f"fsdp-{mode}-2gpu" if mode == "rl" else "fsdp-2gpu"
    args = [str(REPO / "tests" / "dist" / "worker.py"), mode]
    extra = ["--steps", "2"] if mode == "rl" else []
    res = {}
    for n in (1, 2):
        d = out / f"{mode}{n}"
        rc, dt = sh([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *args,
                     str(d), *extra], out / f"{mode}{n}.log", timeout,
                    env={"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(n))})
        if rc != 0:
            return line("FAIL", name, f"{n} GPU(s) exited {rc}; see {out / f'{mode}{n}.log'}")
        res[n] = (d, dt)
    ok = (res[2][0] / "hf" / "model.safetensors").is_file()
    diff = _max_diff(res[1][0], res[2][0])
    return line("PASS" if ok else "FAIL", name, f"1 GPU {res[1][1]:.0f} s, 2 GPUs {res[2][1]:.0f} s (start-up included); "
                f"max |weight diff| 1 vs 2 GPUs {diff:.2e}; gathered HF checkpoint {'written' if ok else 'MISSING'}")


def check_vllm(out: Path) -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return line("SKIP", "vllm", "vllm is not installed")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from prism_lab.models import build_tiny_policy, build_tokenizer, save_policy
    from prism_lab.rollout import Prompt
    from prism_lab.rollout.vllm import VLLMEngine
    from tests.fakes import counting_corpus

    model, proc = build_tiny_policy("tiny-xs", build_tokenizer(counting_corpus(), vocab_size=400), seed=0)
    ckpt = save_policy(model, proc, out / "vllm_ckpt")
    t0 = time.time()
    engine = VLLMEngine(ckpt, proc)
    prompts = [Prompt(messages=[{"role": "user", "content": f"add {i} ."}]) for i in range(4)]
    rollouts = engine.generate(prompts, n=2, max_new_tokens=16, temperature=1.0, seed=0, return_logprobs=True)
    ok = len(rollouts) == 8 and all(r.logprobs is not None and len(r.logprobs) == len(r.token_ids) for r in rollouts)
    return line("PASS" if ok else "FAIL", "vllm", f"{len(rollouts)} rollouts with log-probs in {time.time() - t0:.0f} s "
                f"(vllm {vllm.__version__})")


def check_vllm_colocated(out: Path, n_gpus: int, timeout: float) -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return line("SKIP", "vllm-colocated", "vllm is not installed")
    ok = True
    for n in sorted({1, n_gpus}):
        d = out / f"colocate{n}"
        rc, dt = sh([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                     str(REPO / "benchmarks" / "gpu" / "colocate_check.py"), str(d)], out / f"colocate{n}.log", timeout,
                    env={"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(n)),
                         "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        if rc != 0:
            ok = line("FAIL", "vllm-colocated", f"{n} GPU(s) exited {rc}; see {out / f'colocate{n}.log'}") and ok
            continue
        ranks = json.loads((d / "colocate.json").read_text())
        delta = max(r["max_abs_logprob_delta"] for r in ranks)
        good = all(r["rollouts"] == 8 and r["syncs"] == 1 for r in ranks) and delta < 0.1
        ok = line("PASS" if good else "FAIL", "vllm-colocated",
                  f"{n} GPU(s) {dt:.0f} s: max |logprob delta| vLLM vs policy after sync {delta:.2e}; GPU GiB used "
                  f"asleep {max(r['gib_engine_asleep'] for r in ranks):.1f}, awake "
                  f"{max(r['gib_engine_awake'] for r in ranks):.1f} (before the engine "
                  f"{max(r['gib_before_engine'] for r in ranks):.1f})") and ok
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="Where logs and run directories go (default: a temp dir).")
    ap.add_argument("--timeout", type=float, default=1800, help="Seconds per check.")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="prism_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"logs: {out}", flush=True)
    ok, n = check_cuda()
    if not ok:
        return 1
    results = [check_smoke(out, args.timeout)]
    if n >= 2:
        results += [check_fsdp(out, "sft", args.timeout), check_fsdp(out, "rl", args.timeout)]
    else:
        results.append(line("SKIP", "fsdp-2gpu", f"{n} GPU visible; needs 2"))
    results.append(check_vllm(out))
    results.append(check_vllm_colocated(out, n, args.timeout))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
