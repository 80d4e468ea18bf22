"""experiments/paper-cpu.yaml is experiments/paper.yaml at tiny size: both grids are resolved (plan only, no
run) and every stage config of every cell is compared field by field. Only the fields the hardware forces may
differ; each is listed below with the reason."""

from __future__ import annotations

import json

from prism_lab.harness.planning import build_plan, load_grid
from tests.conftest import REPO, run_cli

PAPER = REPO / "experiments" / "paper.yaml"
PAPER_CPU = REPO / "experiments" / "paper-cpu.yaml"

#: (stage kind, dotted field) -> why paper-cpu.yaml may set it apart from paper.yaml.
HARDWARE_FORCED = {
    # models: tiny random-init presets instead of the hub's Qwen3-VL checkpoints
    ("sft", "model"): "tiny-xs for both sizes instead of Qwen3-VL-4B/8B",
    ("disc_warmup", "discriminator.base"): "the tiny SFT policy is upcycled; Qwen3-VL-2B is a hub checkpoint",
    # data: the synthetic task in the released schemas instead of the released files
    ("data", "source"): "the embedded synthetic task instead of local copies of the released data",
    ("data", "local"): "no released files on a CI machine",
    ("data", "synth"): "a few rows of each synthetic dataset",
    ("eval", "benchmarks"): "the synthetic benchmarks; the paper's 7 need VLMEvalKit and their data",
    ("eval", "backend"): "the built-in backend scores the synthetic benchmarks",
    ("eval", "limit"): "a few items per benchmark",
    ("eval", "drift_items"): "a few held-out rows",
    # step counts
    ("sft", "max_steps"): "a few optimizer steps instead of one epoch",
    ("sft", "save_every"): "a checkpoint within the few steps",
    ("align", "steps"): "a few steps instead of 1500",
    ("rl", "steps"): "a few steps instead of 1500",
    # lengths (token budgets scaled with them: one full prompt + response, as the paper's)
    ("sft", "max_length"): "short synthetic sequences",
    ("disc_warmup", "max_length"): "short synthetic sequences",
    ("align", "max_prompt_length"): "short synthetic prompts",
    ("align", "max_new_tokens"): "short responses",
    ("align", "actor_max_tokens_per_micro_batch"): "prompt + response caps, as the paper's 8192",
    ("align", "disc_max_tokens_per_micro_batch"): "prompt + response caps, as the paper's 8192",
    ("rl", "max_prompt_length"): "short synthetic prompts",
    ("rl", "max_new_tokens"): "short responses",
    ("rl", "algorithm_overrides.max_tokens_per_micro_batch"): "prompt + response caps, as the paper's 10240",
    ("rl", "algorithm_overrides.overlong_buffer.len"): "DAPO's 4096 of 8192, scaled to the responses",
    # the model again: a random-init tiny policy never writes the answer format in a CI's few SFT steps (nor in
    # smoke.yaml's 20 base + 30 SFT steps), so every response's acc is 0, every group has zero variance on the
    # paper's metric and dynamic sampling gives up after 10 generation batches; on the shaped reward DAPO's
    # overlong penalty varies within a group, so groups are dropped and kept and the rest of DAPO runs as set
    ("rl", "algorithm_overrides.filter_groups.metric"): "acc is always 0 for a random-init policy: filter on score",
    ("eval", "drift_max_new_tokens"): "short responses",
    ("eval", "max_new_tokens"): "short responses (the benchmarks' own caps otherwise)",
    # device
    ("*", "resources.gpus"): "no GPU: 0",
    ("*", "resources.processes"): "2 gloo processes where the paper shards over 4 or 8 (checked below)",
    ("*", "resources.param_dtype"): "fp32: bf16 autocast on CPU is emulated and slow",
    ("*", "resources.offload"): "CPU offload needs CUDA",
    ("*", "resources.memory_gb"): "the planner checks the machine's detected memory, not an H100's 80 GB",
    ("*", "precision"): "fp32: bf16 autocast on CPU is emulated and slow",
    ("align", "rollout_engine"): "hf_colocated: vLLM's colocated path with a transformers copy; vLLM needs a GPU",
    ("rl", "rollout_engine"): "hf_colocated: vLLM's colocated path with a transformers copy; vLLM needs a GPU",
}


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("synth", "local"):
            out.update(flat(value, path + "."))
        else:
            out[path] = value
    return out


def allowed(kind: str, path: str) -> bool:
    return (kind, path) in HARDWARE_FORCED or ("*", path) in HARDWARE_FORCED


def by_cell(plan) -> dict[str, dict[str, object]]:
    return {cell.id: {role: plan.runs[key] for role, key in cell.runs.items()} for cell in plan.cells}


def test_paper_cpu_resolves_equal_to_paper_outside_the_hardware_forced_fields():
    paper, cpu = build_plan(load_grid(PAPER)), build_plan(load_grid(PAPER_CPU))
    assert [c.axes for c in cpu.cells] == [c.axes for c in paper.cells]
    paper_runs, cpu_runs = by_cell(paper), by_cell(cpu)
    differences, used = [], set()
    for cell_id, roles in paper_runs.items():
        assert set(cpu_runs[cell_id]) == set(roles), cell_id
        for role, run in roles.items():
            theirs, ours = flat(run.config), flat(cpu_runs[cell_id][role].config)
            for path in sorted(set(theirs) | set(ours)):
                if theirs.get(path, "<unset>") == ours.get(path, "<unset>"):
                    continue
                if not allowed(run.kind, path):
                    differences.append(f"{role}.{path}: paper {theirs.get(path)!r}, paper-cpu {ours.get(path)!r}")
                used.add((run.kind, path) if (run.kind, path) in HARDWARE_FORCED else ("*", path))
            if run.kind != "data" and "resources.processes" in theirs:  # 2 processes wherever the paper shards
                assert ours["resources.processes"] == (2 if theirs["resources.processes"] > 1 else 1), role
                assert ours["resources.gpus"] == 0, role
    assert not differences, "\n".join(differences)
    assert not set(HARDWARE_FORCED) - used, f"stale allow-list entries: {sorted(set(HARDWARE_FORCED) - used)}"


def test_the_paper_settings_that_are_not_hardware_hold_in_paper_cpu():
    """The settings the paper's runs use and the CPU twin must keep (a few spelled out: the comparison above would
    also pass if both grids lost them together)."""
    plan = build_plan(load_grid(PAPER_CPU))
    runs = {run.kind: run.config for run in plan.runs.values()}
    warmup, align = runs["disc_warmup"], runs["align"]
    assert (warmup["student_source"], warmup["seed"], warmup["heldout_fraction"]) == ("dataset", 42, 0.0)
    for cfg in (warmup, align):
        assert (cfg["terminator_convention"], cfg["critic_positions"]) == ("original", "text_1d")
        assert cfg["resources"]["gradient_checkpointing"] is True
    assert {r.config["algorithm"] for r in plan.runs.values() if r.kind == "rl"} == {"grpo", "dapo", "gspo"}


def test_sweep_plan_of_paper_cpu_has_the_paper_grids_cells_and_stage_kinds():
    res = run_cli("sweep", "plan", str(PAPER_CPU), "--format", "json")
    assert res.returncode == 0, res.stderr
    runs = json.loads(res.stdout)
    paper = build_plan(load_grid(PAPER))  # cell ids hash the axes: equal ids, equal cells
    assert {c for r in runs for c in r["cells"]} == {c.id for c in paper.cells}
    assert len(paper.cells) == 12
    assert {r["kind"] for r in runs} == {r.kind for r in paper.runs.values()}
