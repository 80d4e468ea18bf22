"""Which of the driver's environment variables a stage process on a Ray node gets.

A Ray actor starts with the environment ``ray start`` had on its node, not the driver's, so every setting a
stage reads from the environment must be passed on explicitly, or it silently takes the node's value (an eval
without ``PRISM_JUDGE_URL`` scores rule-only). The local executor's stage processes inherit the executor's
whole environment, so they see every variable below too.

Left out on purpose: ``CUDA_VISIBLE_DEVICES`` (Ray assigns each actor its GPUs) and paths to a node's own
installation (``PATH``, ``LD_LIBRARY_PATH``, ``CUDA_HOME``, ``VIRTUAL_ENV``): a node runs its own interpreter.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Prefixes of forwarded variables: prism-lab's own (``PRISM_LAB_*``, ``PRISM_JUDGE_*``, ``PRISM_VLMEVAL_*``,
#: ``PRISM_LMMS_EVAL_PYTHON``, ...), W&B, the Hugging Face hub and libraries (caches, offline mode, token),
#: the collectives (NCCL, Gloo), vLLM and torch (``TORCH_NCCL_*``, ``PYTORCH_CUDA_ALLOC_CONF``).
FORWARDED_ENV_PREFIXES = ("PRISM_", "WANDB_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_", "NCCL_",
                          "GLOO_", "VLLM_", "TORCH_", "PYTORCH_")

#: Single forwarded variables: VLMEvalKit's benchmark directory, the hub-kernels switch (prism_lab/__init__.py),
#: the CPU thread pools (the executor sizes the ones left unset), CUDA behaviour switches.
FORWARDED_ENV_NAMES = ("LMUData", "USE_HUB_KERNELS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                       "CUDA_LAUNCH_BLOCKING", "CUDA_DEVICE_MAX_CONNECTIONS", "CUDA_MODULE_LOADING")


def is_forwarded(name: str) -> bool:
    """Whether the driver passes the variable ``name`` on to the stage processes it starts on Ray nodes."""
    return name in FORWARDED_ENV_NAMES or name.startswith(FORWARDED_ENV_PREFIXES)


def forwarded_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of ``environ`` (the driver's environment) that a stage process on a Ray node gets."""
    return {k: v for k, v in environ.items() if is_forwarded(k)}
