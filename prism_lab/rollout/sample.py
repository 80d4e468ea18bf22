"""The rollout of a training stage: one generate call made from the stage's :class:`RolloutConfig`, whole.

RL (trainers/rl.py) and alignment (trainers/align.py) both sample through :func:`sample_rollouts`, so the
settings they roll out with (n, temperature, top_p, max_new_tokens, batch size) are read in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

from prism_lab.config.rollout import RolloutConfig
from prism_lab.rollout.types import Prompt, Rollout, RolloutEngine

__all__ = ["sample_rollouts"]


def sample_rollouts(engine: RolloutEngine, prompts: Sequence[Prompt], settings: RolloutConfig, *, seed: int,
                    batch_prompts: int | None = None) -> list[Rollout]:
    """``settings.n`` sampled responses per prompt, with their log-probs (a training rollout always keeps them).

    ``seed``: this call's seed (``settings.seed_for(stream, ...)``); ``batch_prompts``: the prompt count the
    generate batch is sized for when ``settings.batch_size`` is None (default: ``len(prompts)``)."""
    return engine.generate(list(prompts), n=settings.n, max_new_tokens=settings.max_new_tokens,
                           temperature=settings.temperature, top_p=settings.top_p, do_sample=True, seed=seed,
                           return_logprobs=True,
                           batch_size=settings.batch_for(len(prompts) if batch_prompts is None else batch_prompts))
