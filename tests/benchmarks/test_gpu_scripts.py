"""The GPU-only benchmark scripts, on CPU: what of them can run without a GPU runs here, so they do not rot.

``benchmarks/gpu/check.py --dry-run`` builds every row's config and memory plan (the paper-cpu grid rewritten for
GPUs, the colocated vLLM rows' planner figures) and prints its table with every row skipped; nothing of vLLM or
of a GPU is exercised (a GPU machine runs the real thing). ``benchmarks/gpu/rl_throughput.py`` refuses in one
line without trl, vllm or a GPU, and its two configs (prism-lab's RLConfig, TRL's GRPOConfig arguments) are
checked against the fields they name.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

import pytest

from benchmarks.gpu import check, colocate_rows, grid_stages, rl_throughput
from benchmarks.gpu.rows import Guard, Row, run_process
from prism_lab.harness.grid import load_raw

STAGE_ROWS = ["a sft", "a disc_warmup", "a align", "a rl grpo", "a rl dapo", "a rl gspo", "a eval"]


def _table(text: str) -> dict[str, str]:
    """Row name -> the rest of its line, from the printed table."""
    rows = {}
    for line in text.splitlines():
        name = line[:30].strip()
        if name.startswith(("a ", "b ", "vllm ")):
            rows[name] = line[30:]
    return rows


def test_check_dry_run_plans_every_row_and_runs_nothing(tmp_path, capsys):
    rc = check.main(["--dry-run", "--gpus", "2", "--memory-gb", "80", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = _table(out)
    expected = STAGE_ROWS + [f"b vllm {p} x{w} proc" for w in (1, 2) for p in ("tiny", "2b")] + ["vllm eval engine"]
    assert list(rows) == expected, out
    assert all(r.split()[0] == "skipped" and "--dry-run" in r for r in rows.values()), out
    for name in STAGE_ROWS[:-1] + expected[7:11]:  # every training row and vLLM row has the planner's figure
        planned = rows[name].split()[3]
        assert float(planned) > 0, f"{name}: {rows[name]}"
    # the grid it wrote: paper-cpu.yaml with the paper's GPU settings back, as many processes as GPUs
    grid = json.loads((tmp_path / "gpu-check.yaml").read_text())
    assert grid["extends"].endswith("experiments/paper-cpu.yaml")
    paper = load_raw(grid_stages.PAPER_CPU.parent / "paper.yaml", ())[0]["stages"]
    for kind in ("sft", "disc_warmup", "align", "rl"):
        res = dict(grid["stages"][kind]["resources"])
        assert res.pop("processes") == res.pop("gpus") == 2 and res.pop("memory_gb") == 80
        assert res == {k: v for k, v in paper[kind]["resources"].items() if k not in ("processes", "gpus", "memory_gb")}
    assert grid["stages"]["rl"]["precision"] == "bf16"


def test_stage_command_puts_the_peak_probe_in_front_of_the_stage_module(tmp_path):
    cmd = grid_stages.stage_command(tmp_path / "root", tmp_path / "g.yaml", "abc", 2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in cmd
    i = cmd.index(str(grid_stages.PROBE))
    assert cmd[i + 1] == "prism_lab.harness.run_stage" and cmd[-1] == "abc" and "-m" not in cmd[i:]


def test_a_colocated_row_fails_on_a_missing_sync_and_passes_on_bf16_noise():
    rank = {"syncs": 1, "rollouts": 8, "max_abs_logprob_delta": 0.02, "gb_engine_asleep": 1.0, "gb_engine_awake": 25.0,
            "gb_step_asleep": 3.0, "gb_step_awake": 27.0}
    ok, stale, nosync = Row("x"), Row("y"), Row("z")
    colocate_rows.fill(ok, [rank, dict(rank, max_abs_logprob_delta=0.03)])
    colocate_rows.fill(stale, [rank, dict(rank, max_abs_logprob_delta=2.0)])
    colocate_rows.fill(nosync, [rank, dict(rank, syncs=0)])
    assert ok.status == "ok" and ok.measured_gb == 3.0 and "3.00e-02" in ok.detail and "engine meas 24.00" in ok.detail
    assert stale.status.startswith("failed: max |logprob delta| 2.00") and nosync.status.startswith("failed: syncs")


def test_the_guard_kills_a_row_that_runs_past_it(tmp_path):
    guard = Guard(0.5, reserve_s=0.0)
    t0 = time.monotonic()
    rc, secs = run_process([sys.executable, "-c", "import time; time.sleep(30)"], tmp_path / "log", guard.left(), {})
    assert rc == 124 and time.monotonic() - t0 < 10
    assert not guard.allows(1.0)


def test_rl_throughput_refuses_in_one_line_without_its_requirements(capsys):
    if not rl_throughput.missing_requirements():
        pytest.skip("trl, vllm and a GPU are all here: the refusal cannot happen")
    assert rl_throughput.main([]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1
    assert cap.err.startswith("rl_throughput.py: missing ") and "nothing was run" in cap.err


def test_rl_throughput_configs_name_real_fields():
    trl = pytest.importorskip("trl")
    args = rl_throughput.parse(["--prompts-per-gpu", "4", "--n", "16", "--max-new-tokens", "8192"])
    ours = rl_throughput.ours_config(args, 8)  # pydantic: an unknown or renamed field fails here
    assert (ours.prompts_per_step, ours.n, ours.max_new_tokens, ours.rollout_engine) == (32, 16, 8192, "vllm")
    kw = rl_throughput.trl_config_kwargs(args, 8, "/nowhere")
    assert set(kw) <= {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    assert kw["vllm_mode"] == "colocate" and kw["num_generations"] == 16 and kw["max_completion_length"] == 8192
    # one optimizer step and one generation per RL step: 32 prompts x 16 over 8 processes, one sequence each
    assert kw["per_device_train_batch_size"] * 8 * kw["gradient_accumulation_steps"] == 32 * 16
    assert kw["steps_per_generation"] == kw["gradient_accumulation_steps"]
