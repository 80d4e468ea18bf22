"""Eval runs get the GPUs they need on both executors: the eval stage's `resources` (one process, `gpus` 0 or 1),
what Ray is asked for, and what the local executor hands out from a (fake) GPU pool. No GPU needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prism_lab.config.eval import EvalConfig
from prism_lab.config.resources import ResourcesConfig
from prism_lab.errors import ConfigError
from prism_lab.harness.executors.local import LocalLauncher
from prism_lab.harness.executors.placement import run_resources
from prism_lab.harness.executors.ray import RunResources, stage_resources
from prism_lab.harness.planning import build_plan, load_grid
from tests.conftest import REPO
from tests.fakes import fake_nvidia_smi


def _eval_runs(grid: str):
    plan = build_plan(load_grid(REPO / "experiments" / grid))
    return plan, [k for k, r in plan.runs.items() if r.kind == "eval"]


def test_eval_has_resources_of_one_process_on_the_cpu_or_one_gpu():
    assert EvalConfig().resources == ResourcesConfig()  # default: the CPU, as before (and the same keys)
    assert EvalConfig(resources={"gpus": 1}).resources.gpus == 1
    with pytest.raises(ValidationError, match="must be 1: an eval runs in one process"):
        EvalConfig(resources={"processes": 2, "gpus": 2})


def test_paper_grid_evals_ask_ray_for_one_gpu_and_the_cpu_grid_for_none():
    plan, evals = _eval_runs("paper.yaml")
    assert evals and {stage_resources(plan.runs[k].config) for k in evals} == {RunResources(processes=1, gpus=1, cpus=1)}
    cpu_plan, cpu_evals = _eval_runs("paper-cpu.yaml")
    assert cpu_evals and {run_resources(cpu_plan.runs[k].config).gpus for k in cpu_evals} == {0}


def test_local_executor_gives_each_eval_a_gpu_of_its_own_and_hides_gpus_from_runs_without(tmp_path, monkeypatch):
    plan, evals = _eval_runs("paper.yaml")
    # no --gpus, no CUDA_VISIBLE_DEVICES: the pool is what nvidia-smi lists, because the evals ask for GPUs
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin", {"0": 81559, "1": 81559}))
    launcher = LocalLauncher(tmp_path, workers=4)
    launcher.open(plan, evals)
    first, second = (launcher.can_place(plan.runs[k]) for k in evals[:2])
    assert (first, second) == (["0"], ["1"]) and launcher.can_place(plan.runs[evals[2]]) is None  # it queues
    res = run_resources(plan.runs[evals[0]].config)
    assert launcher.env_for(res, first)["CUDA_VISIBLE_DEVICES"] == "0"
    # a run that asks for no GPU sees none while others hold them (it saw every GPU before)
    assert launcher.env_for(ResourcesConfig(), [])["CUDA_VISIBLE_DEVICES"] == ""
    # a machine without GPUs refuses the paper's evals before anything starts
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "none", {}))
    with pytest.raises(ConfigError, match=r"needs 1 GPUs \(resources.gpus\)"):
        LocalLauncher(tmp_path, workers=4).open(plan, evals)
