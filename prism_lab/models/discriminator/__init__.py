"""The PRISM discriminator: a sparsely upcycled Qwen3-VL MoE with a scalar score head (the PRISM
authors' ``moe/`` scripts, XIAO4579/PRISM at 6079044; docs/prism_method.md §4).

* :func:`upcycle_dense_to_moe` turns a dense ``Qwen3VLForConditionalGeneration`` into a
  ``Qwen3VLMoeForConditionalGeneration`` whose experts are noisy copies of the dense MLP.
* :class:`Discriminator` = the VLM's inner model (no LM head) + Dropout -> Linear(d, 1, bias=False); the
  sequence score is the head output at the last valid token (:func:`score_at_last_valid_token`).
* :func:`save_discriminator` / :func:`load_discriminator`: one HF directory, safetensors only, plus
  ``discriminator.json``; loading checks that the discriminator's processor matches the policy's.

One job per module: ``upcycle`` (dense -> MoE), ``scorer`` (backbone + score head), ``compat`` (processor
compatibility), ``checkpoint`` (save / load).
"""

from prism_lab.models.discriminator.checkpoint import (
    DISC_CONFIG_NAME,
    HEAD_FILE_NAME,
    load_discriminator,
    load_discriminator_processor,
    save_discriminator,
)
from prism_lab.models.discriminator.compat import DiscProcessorParts, check_compatible
from prism_lab.models.discriminator.scorer import (
    DISC_KINDS,
    Discriminator,
    ScoreHead,
    build_discriminator,
    score_at_last_valid_token,
)
from prism_lab.models.discriminator.upcycle import (
    expert_weight_layout,
    moe_config_from_dense,
    set_experts_implementation,
    upcycle_dense_to_moe,
)

__all__ = [
    "DISC_CONFIG_NAME",
    "DISC_KINDS",
    "HEAD_FILE_NAME",
    "Discriminator",
    "DiscProcessorParts",
    "ScoreHead",
    "build_discriminator",
    "check_compatible",
    "expert_weight_layout",
    "load_discriminator",
    "load_discriminator_processor",
    "moe_config_from_dense",
    "save_discriminator",
    "score_at_last_valid_token",
    "set_experts_implementation",
    "upcycle_dense_to_moe",
]
