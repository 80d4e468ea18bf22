"""Part (b) of ``benchmarks/gpu/check.py`` (issue #32 item 5): the colocated vLLM engine, for real.

For the tiny and the 2B-shaped policy, on 1 process and on every GPU: ``colocate_check.py`` under torchrun
(one engine per rank, external launcher, sleep mode, weight sync from the moved, FSDP2-sharded policy).
Measured: the max |log-prob delta| between vLLM and the policy after the sync, the peak GPU memory of a
training step with the engine asleep (sleep mode) and awake (what a run without sleep mode keeps), and the
engine's reservation (awake less asleep). Planned: ``harness.memory.estimate`` for an RL run of the same
settings with the vLLM engine at the same memory share, with sleep mode and without
(``memory_terms.VLLM_SLEEPS`` set to False for that figure).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from benchmarks.gpu.rows import GB, Guard, Row, base_env, log_error, run_process, torchrun

SCRIPT = Path(__file__).resolve().parent / "colocate_check.py"
#: Seconds a colocated row needs at least (torchrun, imports, the engine's start-up, one rollout, two steps).
MIN_ROW_S = {"tiny": 60.0, "2b": 90.0}
#: Above this |log-prob delta| the engine did not sample with the synced weights (bf16 alone stays far below).
DELTA_FAIL = 0.5
DELTA_WARN = 0.1


def cases(n_gpus: int) -> list[tuple[str, int]]:
    """(policy, processes) of each row: both policies on 1 process, then on every GPU."""
    return list(dict.fromkeys((p, w) for w in (1, n_gpus) for p in ("tiny", "2b")))


def policy_shape(policy: str) -> dict:
    """The policy's ModelShape dict, counted on the meta device (nothing allocated)."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from benchmarks.gpu.colocate_check import policy_preset, tokenizer
    from prism_lab.models.footprint import shape_of
    from prism_lab.models.loader import tiny_config

    preset = policy_preset(policy)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(tiny_config(preset, tokenizer()))
    return shape_of(model, preset.name, preset.image_size, preset.patch_size).to_dict()


@contextmanager
def _engine_keeps_memory():
    from prism_lab.harness import memory_terms as terms

    old, terms.VLLM_SLEEPS = terms.VLLM_SLEEPS, False
    try:
        yield
    finally:
        terms.VLLM_SLEEPS = old


def planned(shape: dict, world: int, util: float, device_bytes: float) -> dict[str, float]:
    """The planner's GB for an RL run of colocate_check's settings: peak with sleep, without, the engine's share."""
    from benchmarks.gpu.colocate_check import MAX_NEW, MAX_PROMPT, PROMPTS, SAMPLES
    from prism_lab.harness import memory as mem

    cfg = {"prompts_per_step": PROMPTS * world, "n": SAMPLES, "max_prompt_length": MAX_PROMPT,
           "max_new_tokens": MAX_NEW, "micro_batch_size": PROMPTS * SAMPLES, "rollout_engine": "vllm",
           "rollout_gpu_memory_utilization": util, "precision": "bf16",
           "resources": {"processes": world, "gpus": world, "param_dtype": "bf16" if world > 1 else "fp32"}}
    sleep = mem.estimate("rl", cfg, {"policy": shape}, on_gpu=True, device_bytes=device_bytes)
    with _engine_keeps_memory():
        awake = mem.estimate("rl", cfg, {"policy": shape}, on_gpu=True, device_bytes=device_bytes)
    return {"sleep": sleep.peak / GB, "no_sleep": awake.peak / GB,
            "engine": sleep.components.get("generation/vllm", 0.0) / GB}


def plan_rows(n_gpus: int, util: float, device_bytes: float) -> list[Row]:
    rows, shapes = [], {}
    for policy, world in cases(n_gpus):
        row = Row(f"b vllm {policy} x{world} proc", extra={"policy": policy, "world": world})
        try:
            shapes.setdefault(policy, policy_shape(policy))
            plan = planned(shapes[policy], world, util, device_bytes)
            row.planned_gb = plan["sleep"]
            row.extra["plan"] = plan
            row.detail = (f"{shapes[policy]['params'] / 1e6:.1f}M params; plan: no sleep {plan['no_sleep']:.2f} GB, "
                          f"engine {plan['engine']:.2f} GB")
        except Exception as exc:  # noqa: BLE001 - a planner error is this row's finding
            row.detail = f"planner: {type(exc).__name__}: {' '.join(str(exc).split())[:150]}"
        rows.append(row)
    if n_gpus == 1:
        rows += [Row(f"b vllm {p} xN proc", status="skipped: 1 GPU visible (same as x1)") for p in ("tiny", "2b")]
    return rows


def vllm_missing() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        return f"vllm is not installed ({exc.name}): pip install -e '.[gpu]'"
    return None


def run_rows(rows: list[Row], out: Path, util: float, guard: Guard) -> None:
    missing = vllm_missing()
    for row in rows:
        if "policy" not in row.extra:
            continue
        if missing:
            row.status = f"skipped: {missing}"
            continue
        policy, world = row.extra["policy"], row.extra["world"]
        if not guard.allows(MIN_ROW_S[policy]):
            row.status = f"skipped: wall-clock guard ({max(0.0, guard.left()):.0f} s left)"
            continue
        d = out / f"colocate-{policy}-{world}"
        log = out / "logs" / f"colocate-{policy}-{world}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = base_env({"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(world)),
                        "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
        rc, row.seconds = run_process(torchrun(world, SCRIPT, str(d), "--policy", policy, "--util", str(util)), log,
                                      guard.left(), env)
        if rc != 0:
            row.status = (f"failed: killed by the wall-clock guard after {row.seconds:.0f} s (log {log})" if rc == 124
                          else f"failed: {log_error(log)}")
            continue
        fill(row, json.loads((d / "colocate.json").read_text()))


def fill(row: Row, ranks: list[dict]) -> None:
    """The row's figures from every rank's record (the largest over the ranks)."""
    delta = max(r["max_abs_logprob_delta"] for r in ranks)
    worst = lambda k: max(r[k] for r in ranks)  # noqa: E731
    row.measured_gb = worst("gb_step_asleep")
    plan = row.extra.get("plan", {})
    engine = max(r["gb_engine_awake"] - r["gb_engine_asleep"] for r in ranks)
    synced = all(r["syncs"] == 1 and r["rollouts"] > 0 for r in ranks)
    row.detail = (f"max |logprob delta| {delta:.2e}{' (above %.1f)' % DELTA_WARN if delta > DELTA_WARN else ''}; "
                  f"no sleep meas {worst('gb_step_awake'):.2f} / plan {plan.get('no_sleep', float('nan')):.2f} GB; "
                  f"engine meas {engine:.2f} / plan {plan.get('engine', float('nan')):.2f} GB; "
                  f"asleep {worst('gb_engine_asleep'):.2f} GB")
    if not synced:
        row.status = f"failed: syncs {[r['syncs'] for r in ranks]}, rollouts {[r['rollouts'] for r in ranks]}"
    elif not delta <= DELTA_FAIL:
        row.status = f"failed: max |logprob delta| {delta:.2f} > {DELTA_FAIL}: the engine did not sample the synced weights"
    else:
        row.status = "ok"
