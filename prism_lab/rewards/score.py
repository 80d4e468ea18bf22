"""The RLVR rule reward of one response: the format gate, then the answer judge."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prism_lab.prompts import extract_answer, is_format_valid
from prism_lab.rewards.answer_judge import judge


@dataclass(frozen=True)
class RewardResult:
    """One response's reward: ``score = acc_weight * acc + format_weight * format``."""

    score: float
    acc: float
    format: float

    def to_dict(self) -> dict[str, float]:
        """The original scorer's output dict ``{score, acc_reward, format_reward}``."""
        return {"score": self.score, "acc_reward": self.acc, "format_reward": self.format}


def compute_score(
    response: str,
    ground_truth: str,
    equivalent_answers: Sequence[str] = (),
    *,
    acc_weight: float = 0.8,
    format_weight: float = 0.2,
    max_answer_chars: int = 1024,
) -> RewardResult:
    """Score a decoded response against the ground truth (and any equivalent answers).

    Format failure gives (0, 0, 0). A valid format with an empty answer, or an answer of
    ``max_answer_chars`` characters or more, gives (format_weight, 0, 1). Otherwise acc is 1 when
    the answer matches the ground truth or any of ``equivalent_answers`` under :func:`judge`.
    """
    if not isinstance(response, str) or not is_format_valid(response):
        return RewardResult(0.0, 0.0, 0.0)
    answer = extract_answer(response) or ""
    if not answer or len(answer) >= max_answer_chars:
        return RewardResult(float(format_weight), 0.0, 1.0)
    targets = [str(ground_truth), *(str(a) for a in equivalent_answers)]
    acc = 1.0 if any(judge(answer, t) for t in targets) else 0.0
    return RewardResult(acc_weight * acc + format_weight * 1.0, acc, 1.0)
