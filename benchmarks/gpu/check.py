"""GPU check: the paper grid's stages on the GPUs and the colocated vLLM engine, in one table, in under 5 minutes.

    python benchmarks/gpu/check.py [--out DIR] [--budget 285] [--util 0.3] [--rollout-engine hf|vllm]
    python benchmarks/gpu/check.py --dry-run [--gpus 8] [--memory-gb 80]     # CPU: configs and plans only

Run it from the repository root after the README's set-up and ``pip install -e ".[gpu]"`` (vLLM, flash-attn).
Nothing is downloaded (every model is a random-init preset). One table, one row per check:

* ``a <stage>`` (issue #31 item 6): ``experiments/paper-cpu.yaml``'s shapes on the GPUs: tiny models, bf16,
  NCCL with as many processes as GPUs (at most the paper's), the paper's checkpointing and offload; the stage
  runs sft, disc_warmup, align, rl (grpo, dapo, gspo) and one eval, each through the stage's own process as
  ``sweep run`` starts it (benchmarks/gpu/grid_stages.py). Measured: the peak of ``torch.cuda``'s allocated
  memory over the ranks; planned: the memory planner's figure for the same run (``sweep plan --resources``).
* ``b vllm <policy> x<N> proc`` (issue #32 item 5): the colocated vLLM engine (benchmarks/gpu/colocate_rows.py)
  for the tiny and a 2B-shaped policy, on 1 process and on every GPU: max |log-prob delta| vLLM vs the policy
  after a weight sync, and the peak GPU memory of a training step with the engine asleep (measured column)
  and awake (no sleep mode), each against the planner.
* ``vllm eval engine``: the plain engine of evaluation and the warm-up, when time is left.

A row ends ``ok``, ``failed`` with the error's line, or ``skipped`` with the reason; no row stops the table. The
wall-clock guard (``--budget`` seconds in all; part (a) gets at most half) kills a row that runs past it and
skips the rows that no longer fit. Without a CUDA device, or with ``--dry-run``, every row's config and plan
are built and the table prints with ``skipped`` (tests/benchmarks/test_gpu_scripts.py runs that on CPU).
Logs go to ``--out`` (default: a temporary directory). Exit code 1 when a row failed, else 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu import colocate_rows, grid_stages  # noqa: E402
from benchmarks.gpu.rows import Guard, Row, base_env, format_table, log_error, one_line, run_process  # noqa: E402

#: Share of the budget part (a) may use; part (b) gets the rest.
STAGES_SHARE = 0.5


def detect_gpus() -> tuple[int, float, str] | None:
    """(count, GB of the smallest, description) of the visible CUDA devices; None without any."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    from prism_lab.models.attention import choose_attn_implementation

    n = torch.cuda.device_count()
    props = [torch.cuda.get_device_properties(i) for i in range(n)]
    gb = min(p.total_memory for p in props) / 1e9
    desc = (f"{n} x {props[0].name} ({gb:.0f} GB); bf16 {torch.cuda.is_bf16_supported()}; attention "
            f"{choose_attn_implementation('cuda')}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    return n, gb, desc


def vllm_eval_row(out: Path, guard: Guard) -> Row:
    """The plain vLLM engine (evaluation, warm-up): a tiny checkpoint generates 4 prompts x 2 with log-probs."""
    row = Row("vllm eval engine")
    if (missing := colocate_rows.vllm_missing()):
        row.status = f"skipped: {missing}"
        return row
    if not guard.allows(45.0):
        row.status = f"skipped: wall-clock guard ({max(0.0, guard.left()):.0f} s left)"
        return row
    code = ("import sys; from pathlib import Path; from benchmarks.gpu.colocate_check import tokenizer;"
            "from prism_lab.models import build_tiny_policy, save_policy; from prism_lab.rollout import Prompt;"
            "from prism_lab.rollout.vllm import VLLMEngine;"
            "m, p = build_tiny_policy('tiny-xs', tokenizer(), seed=0); d = save_policy(m, p, Path(sys.argv[1]));"
            "e = VLLMEngine(d, p, max_model_len=272);"
            "r = e.generate([Prompt(messages=[{'role': 'user', 'content': f'add {i} .'}]) for i in range(4)], n=2,"
            " max_new_tokens=16, seed=0, return_logprobs=True);"
            "assert len(r) == 8 and all(x.logprobs is not None and len(x.logprobs) == len(x.token_ids) for x in r)")
    log = out / "logs" / "vllm-eval.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    rc, row.seconds = run_process([sys.executable, "-c", code, str(out / "vllm_eval_ckpt")], log, guard.left(),
                                  base_env({"CUDA_VISIBLE_DEVICES": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}))
    row.status = "ok" if rc == 0 else f"failed: {log_error(log)}"
    return row


def build_rows(out: Path, n_gpus: int, memory_gb: float, util: float, rollout_engine: str | None):
    """(plan, keys, part (a) rows, part (b) rows), every config and planner figure built; nothing run."""
    plan, keys = None, []
    try:
        grid = grid_stages.write_grid(out, grid_stages.grid_overrides(n_gpus, memory_gb, rollout_engine))
        plan, keys, a_rows = grid_stages.plan_rows(grid)
    except Exception as exc:  # noqa: BLE001 - the grid's error is the row's finding
        a_rows = [Row("a grid", status=f"failed: {one_line(f'{type(exc).__name__}: {exc}')}")]
    return plan, keys, a_rows, colocate_rows.plan_rows(n_gpus, util, memory_gb * 1e9)


def _guarded(rows: list[Row], fn, *args) -> None:
    """``fn(*args)``; an unexpected error marks the rows it left unfinished as failed, and the table goes on."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        why = one_line(f"{type(exc).__name__}: {exc}")
        for r in rows:
            if r.status == "skipped: not run":
                r.status = f"failed: {why}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="Logs and run directories (default: a temporary dir).")
    ap.add_argument("--budget", type=float, default=285.0, help="Wall-clock seconds for the whole check.")
    ap.add_argument("--util", type=float, default=0.3, help="gpu_memory_utilization of the colocated engines.")
    ap.add_argument("--rollout-engine", choices=["hf", "vllm"], default=None,
                    help="Rollouts of part (a)'s align and rl runs (default: paper-cpu.yaml's).")
    ap.add_argument("--dry-run", action="store_true", help="Build every row's config and plan; run nothing.")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs to plan for in a dry run (default: those visible, else 1).")
    ap.add_argument("--memory-gb", type=float, default=80.0, help="GB per GPU to plan for in a dry run.")
    args = ap.parse_args(argv)
    guard = Guard(args.budget)
    t0 = time.monotonic()
    out = args.out or Path(tempfile.mkdtemp(prefix="prism_gpu_check_"))
    out.mkdir(parents=True, exist_ok=True)
    gpus = None if args.dry_run else detect_gpus()
    n_gpus, memory_gb = (gpus[0], gpus[1]) if gpus else (args.gpus or 1, args.memory_gb)
    print(f"logs: {out}", flush=True)
    print(gpus[2] if gpus else f"{'--dry-run' if args.dry_run else 'no CUDA device'}: planning for {n_gpus} GPU(s) "
          f"of {memory_gb:.0f} GB, nothing runs", flush=True)
    plan, keys, a_rows, b_rows = build_rows(out, n_gpus, memory_gb, args.util, args.rollout_engine)
    extra: list[Row] = []
    if gpus is None:
        reason = "--dry-run" if args.dry_run else "no GPU"
        for r in a_rows + b_rows:
            if r.status == "skipped: not run":
                r.status = f"skipped: {reason}"
        extra.append(Row("vllm eval engine", status=f"skipped: {reason}"))
        if plan is not None:
            grid_stages.hide_setup(plan, keys, a_rows)
    else:
        if plan is not None:
            _guarded(a_rows, grid_stages.run_rows, plan, keys, a_rows, out / "gpu-check.yaml", out, n_gpus, guard,
                     guard.at(STAGES_SHARE))
        _guarded(b_rows, colocate_rows.run_rows, b_rows, out, args.util, guard)
        extra.append(vllm_eval_row(out, guard))
    rows = [r for r in a_rows + b_rows + extra if not r.extra.get("hide")]
    print(format_table(rows), flush=True)
    print(f"{sum(r.ok for r in rows)} ok, {sum(r.failed for r in rows)} failed, "
          f"{sum(r.status.startswith('skipped') for r in rows)} skipped in {time.monotonic() - t0:.0f} s", flush=True)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
