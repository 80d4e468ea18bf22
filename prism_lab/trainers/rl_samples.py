"""What one RL step produces: its samples with their rewards (:func:`score_rollouts`), and the summary
of a whole run (:class:`RLResult`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prism_lab.algos.dapo import overlong_penalty
from prism_lab.rollout import Rollout

__all__ = ["RLResult", "RLSample", "score_rollouts"]


@dataclass
class RLSample:
    """One trajectory of the training batch."""

    prompt_key: int  # index into the step's list of unique prompts
    group: tuple[int, int]  # (generation batch, prompt index within it)
    token_ids: list[int]
    rollout_logprobs: list[float] | None
    finish_reason: str
    score: float
    acc: float
    format: float
    reward: float  # score + overlong penalty
    advantage: float = 0.0


def _score_one(score_fn, text: str, ex, acc_w: float, fmt_w: float) -> tuple[float, float, float]:
    r = score_fn(text, ex.ground_truth, list(ex.equivalent_answers or ()), acc_weight=acc_w, format_weight=fmt_w)
    return float(r.score), float(r.acc), float(r.format)


def score_rollouts(
    rollouts: Sequence[Rollout],
    examples: Sequence[Any],
    *,
    acc_weight: float = 0.8,
    format_weight: float = 0.2,
    overlong: tuple[int, int, float] | None = None,
    score_fn: Callable[..., Any] | None = None,
) -> list[tuple[float, float, float, float]]:
    """``(reward, score, acc, format)`` per rollout; ``examples[r.prompt_index]`` holds the answer.

    ``overlong = (max_len, buffer_len, factor)`` adds the DAPO soft overlong penalty on the
    completion length (tokens, eos included) to the score.
    """
    if score_fn is None:
        from prism_lab.rewards import compute_score as score_fn
    rows = [_score_one(score_fn, r.text, examples[r.prompt_index], acc_weight, format_weight) for r in rollouts]
    if overlong is not None and rollouts:
        max_len, buf, factor = overlong
        pen = overlong_penalty([len(r.token_ids) for r in rollouts], max_len=max_len, buffer_len=buf, factor=factor).tolist()
    else:
        pen = [0.0] * len(rollouts)
    return [(s + p, s, a, f) for (s, a, f), p in zip(rows, pen)]


@dataclass
class RLResult:
    """Summary of a ``train_rl`` call."""

    steps_done: int
    start_step: int
    stopped_early: bool
    last_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    elapsed_s: float = 0.0
    recompute_calls: int = 0  # no-grad old-log-prob passes (0 when every update was on-policy)

    def summary(self) -> dict[str, Any]:
        keep = ("reward/mean", "acc/mean", "format/mean", "response_length/mean", "samples/s")
        return {
            "steps_done": self.steps_done,
            "start_step": self.start_step,
            "stopped_early": self.stopped_early,
            "elapsed_s": round(self.elapsed_s, 3),
            **{f"final/{k}": self.last_metrics[k] for k in keep if k in self.last_metrics},
        }
