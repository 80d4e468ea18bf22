"""What the Ray driver passes on to stage processes (harness/executors/forwarded_env.py): a pure filter."""

from __future__ import annotations

from prism_lab.harness.executors.forwarded_env import forwarded_env


def test_the_settings_a_stage_reads_are_forwarded_and_node_specific_ones_are_not():
    driver = {
        "PRISM_LAB_PLUGINS": "my.plugin", "PRISM_JUDGE_URL": "http://judge:8000/v1", "PRISM_JUDGE_API_KEY": "k",
        "PRISM_VLMEVAL_PYTHON": "/opt/vlmeval/bin/python", "PRISM_LMMS_EVAL_PYTHON": "/opt/lmms/bin/python",
        "LMUData": "/data/LMUData", "WANDB_PROJECT": "prism", "HF_HOME": "/shared/hf", "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "NCCL_DEBUG": "INFO", "NCCL_SOCKET_IFNAME": "ib0", "VLLM_USE_V1": "1",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "OMP_NUM_THREADS": "4", "USE_HUB_KERNELS": "0", "CUDA_LAUNCH_BLOCKING": "1",
    }
    node_specific = {"CUDA_VISIBLE_DEVICES": "0,1", "PATH": "/usr/bin", "LD_LIBRARY_PATH": "/usr/lib",
                     "CUDA_HOME": "/usr/local/cuda", "VIRTUAL_ENV": "/venv", "HOME": "/home/me", "RAY_ADDRESS": "h:1",
                     "PRISMATIC": "x", "lmudata": "/wrong/case"}
    assert forwarded_env({**driver, **node_specific}) == driver
