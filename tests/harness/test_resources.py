"""Per-stage `resources`: the config model, content keys, GPU pools and placement, and the local
executor launching multi-process runs under torchrun with GPUs of their own (test stage kind)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from prism_lab.config.resources import ResourcesConfig
from prism_lab.errors import ConfigError
from prism_lab.harness.devices import gpu_pool, parse_gpu_list
from prism_lab.harness.executors.placement import GpuAllocator, launch_command, placement_env
from prism_lab.harness.plan import content_key
from tests.conftest import cli_env, run_cli
from tests.fakes import fake_nvidia_smi

PLUGIN = {"PRISM_LAB_PLUGINS": "tests.plugins.chain"}


def test_resources_defaults_are_one_cpu_process_and_gpus_must_match_processes():
    r = ResourcesConfig()
    assert (r.processes, r.gpus, r.offload, r.gradient_checkpointing) == (1, 0, False, False)
    assert ResourcesConfig(processes=8, gpus=8).cpus_needed == 8
    with pytest.raises(ValidationError, match="one GPU per rank"):
        ResourcesConfig(processes=2, gpus=4)
    with pytest.raises(ValidationError):
        ResourcesConfig(procs=2)  # unknown field


def test_training_stages_have_resources_and_check_their_global_batches():
    from prism_lab.config.align import AlignConfig, DiscWarmupConfig
    from prism_lab.config.rl import RLConfig
    from prism_lab.config.sft import SFTConfig

    for model in (SFTConfig, DiscWarmupConfig, AlignConfig, RLConfig):
        assert model().resources == ResourcesConfig()
    with pytest.raises(ValidationError, match="batch_size"):
        SFTConfig(batch_size=2, resources={"processes": 4})
    with pytest.raises(ValidationError, match="prompts_per_step"):
        RLConfig(prompts_per_step=2, resources={"processes": 4})


def test_default_resources_leave_content_keys_as_they_were():
    base = {"lr": 1.0}
    with_default = {**base, "resources": ResourcesConfig().model_dump(mode="json")}
    assert content_key("sft", 1, with_default, {}) == content_key("sft", 1, base, {})
    eight = {**base, "resources": ResourcesConfig(processes=8, gpus=8).model_dump(mode="json")}
    assert content_key("sft", 1, eight, {}) != content_key("sft", 1, base, {})


def test_gpu_pool_comes_from_the_option_then_cuda_visible_devices():
    assert gpu_pool("0, 2,3", {}) == ["0", "2", "3"]
    assert gpu_pool(None, {"CUDA_VISIBLE_DEVICES": "4,5"}) == ["4", "5"]
    assert gpu_pool(None, {"CUDA_VISIBLE_DEVICES": ""}) is None
    assert gpu_pool(None, {}) is None
    for bad in ("", "0,,1", "1,1"):
        with pytest.raises(ConfigError):
            parse_gpu_list(bad)


def test_allocator_gives_each_run_its_own_gpus_and_queues_the_rest():
    alloc = GpuAllocator(["0", "1", "2"])
    a = alloc.take(2)
    assert a == ["0", "1"]
    assert alloc.take(2) is None  # only one left: this run waits
    b = alloc.take(1)
    assert b == ["2"] and not set(a) & set(b)
    alloc.release(a)
    assert alloc.take(2) == ["0", "1"]
    with pytest.raises(ConfigError, match="needs 4 GPUs"):
        alloc.check("sft x", 4)
    shared = GpuAllocator(["0", "1"], share=True)
    assert shared.take(2) == ["0", "1"] and shared.take(1) == ["0"]  # sharing never waits


def test_launch_command_and_environment(tmp_path):
    one = launch_command(tmp_path, "k", 1)
    assert one[1:3] == ["-m", "prism_lab.harness.run_stage"]
    two = launch_command(tmp_path, "k", 2)
    assert two[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node=2" in two and two[-1] == "k"
    res = ResourcesConfig(processes=2, gpus=2)
    assert placement_env({}, res, ["3", "5"], True)["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert placement_env({"CUDA_VISIBLE_DEVICES": "0"}, ResourcesConfig(), [], True)["CUDA_VISIBLE_DEVICES"] == ""
    assert placement_env({"CUDA_VISIBLE_DEVICES": "0"}, ResourcesConfig(), [], False)["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in placement_env({}, None, [], True)  # kinds without resources


def _grid(tmp: Path, middle_resources: dict) -> Path:
    counter = str(tmp / "executions.log")
    grid = {"name": "chain", "pipeline": "test-chain", "axes": {"x": [1, 2]},
            "stages": {"first": {"counter": counter}, "last": {"counter": counter},
                       "middle": {"counter": counter, "resources": middle_resources}}}
    path = tmp / "chain.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_executor_runs_multi_process_stages_under_torchrun_on_their_own_gpus(tmp_path):
    grid = _grid(tmp_path, {"processes": 2, "gpus": 2})
    path = fake_nvidia_smi(tmp_path / "bin", {str(i): 81559 for i in range(10)})  # --gpus names GPUs that exist
    res = run_cli("sweep", "run", str(grid), "--root", str(tmp_path / "root"), "-q", "--workers", "2",
                  "--gpus", "7,8,9", env=cli_env(PATH=path, **PLUGIN))
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in (tmp_path / "executions.log.placement").read_text().splitlines()]
    by_value: dict[str, list[list[str]]] = {}
    for r in rows:
        by_value.setdefault(r[1], []).append(r)
    assert sorted(by_value) == ["1", "2"]
    spans = []
    for value, ranks in by_value.items():
        assert sorted(r[2] for r in ranks) == ["0", "1"] and {r[3] for r in ranks} == {"2"}  # torchrun, 2 ranks
        gpus = {r[4] for r in ranks}
        assert len(gpus) == 1 and len(next(iter(gpus)).split(",")) == 2  # both ranks see the run's 2 GPUs
        spans.append((min(float(r[5]) for r in ranks), max(float(r[6]) for r in ranks), next(iter(gpus))))
    (s1, e1, g1), (s2, e2, g2) = sorted(spans)
    assert e1 <= s2 + 1e-3  # 3 GPUs cannot hold two 2-GPU runs at once: the second waited
    assert set(g1.split(",")) <= {"7", "8", "9"} and set(g2.split(",")) <= {"7", "8", "9"}


def test_a_run_that_needs_more_gpus_than_given_is_refused_before_anything_is_written(tmp_path):
    grid = _grid(tmp_path, {"processes": 4, "gpus": 4})
    root = tmp_path / "root"
    path = fake_nvidia_smi(tmp_path / "bin", {"0": 81559, "1": 81559})
    res = run_cli("sweep", "run", str(grid), "--root", str(root), "-q", "--gpus", "0,1",
                  env=cli_env(PATH=path, **PLUGIN))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs 4 GPUs" in lines[0] and "GPUs 0,1" in lines[0]
    assert not (root / "ledger.sqlite").exists()
