"""The paper grids' RL and alignment stages roll out through the colocated engine interface (issue 32), read at
plan level (no run): paper.yaml with vLLM on every rank of a multi-process run (no longer refused), paper-cpu.yaml
with the same colocated path around a transformers copy (``hf_colocated``), since vLLM needs a GPU."""

from __future__ import annotations

from prism_lab.harness.planning import build_plan, load_grid
from prism_lab.harness.stage_kinds import STAGE_KINDS
from tests.conftest import REPO


def _rollout_stages(grid: str) -> list[tuple[str, object]]:
    plan = build_plan(load_grid(REPO / "experiments" / grid))
    return [(run.kind, STAGE_KINDS.get(run.kind).config_model().model_validate(run.config))
            for run in plan.runs.values() if run.kind in ("rl", "align")]


def test_paper_grids_roll_rl_and_alignment_out_through_the_colocated_engines():
    paper = _rollout_stages("paper.yaml")
    assert {kind for kind, _ in paper} == {"rl", "align"}
    for kind, cfg in paper:  # the config accepts vLLM with several processes; each rank's engine is its own
        assert cfg.rollout_engine == "vllm" and cfg.resources.processes > 1, kind
        settings = cfg.rollout()  # what make_training_engine builds each rank's engine with (rollout/vllm.py)
        assert settings.engine == "vllm" and settings.max_model_len == cfg.max_prompt_length + cfg.max_new_tokens
        assert settings.seed_for("vllm/engine", 0) != settings.seed_for("vllm/engine", cfg.resources.processes - 1)
        if kind == "align":
            assert settings.gpu_memory_utilization == 0.25  # the paper's alignment share
    cpu = _rollout_stages("paper-cpu.yaml")
    assert {kind for kind, _ in cpu} == {"rl", "align"}
    assert {(cfg.rollout_engine, cfg.rollout().engine, cfg.resources.processes) for _, cfg in cpu} == \
        {("hf_colocated", "hf_colocated", 2)}
