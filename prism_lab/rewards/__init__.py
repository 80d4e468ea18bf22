"""The RLVR rule reward: a format gate plus a rule-based answer judge, as in the scorer of the PRISM
authors' repository (XIAO4579/PRISM at 6079044, ``mm_gad_no_llm.compute_score``); the rules are
summarised in docs/prism_method.md §7.1.

``compute_score(response, ground_truth)`` returns ``RewardResult(score, acc, format)``:

1. the response fails the response-format regex           -> (0, 0, 0)
2. the first ``<answer>`` block is empty or >= 1024 chars -> (0.2, 0, 1)
3. otherwise acc = judge(answer, gt) and score = 0.8 * acc + 0.2.

One job per module: ``score`` (the gate and the weights), ``answer_judge`` (the cascade), ``normalise``
(normalisation, multi-value split), ``mcq`` (option letters), ``numbers`` (decimals, coordinates),
``units`` (trailing units), ``loose_text`` and ``math_verify_fallback`` (the symbolic last step,
imported lazily, so importing this package is cheap).
"""

from __future__ import annotations

from prism_lab.rewards.answer_judge import judge, rule_judge, single_judge
from prism_lab.rewards.loose_text import loose_text
from prism_lab.rewards.math_verify_fallback import math_verify_equal
from prism_lab.rewards.mcq import extract_mcq_letter, gt_mcq_letter, is_mcq_ground_truth
from prism_lab.rewards.normalise import normalise, split_multi, strip_math_delimiters
from prism_lab.rewards.numbers import coordinate_pairs, numeric_equal, parse_number
from prism_lab.rewards.score import RewardResult, compute_score
from prism_lab.rewards.units import strip_units

__all__ = [
    "RewardResult",
    "compute_score",
    "judge",
    "rule_judge",
    "single_judge",
    "normalise",
    "strip_math_delimiters",
    "split_multi",
    "is_mcq_ground_truth",
    "gt_mcq_letter",
    "extract_mcq_letter",
    "coordinate_pairs",
    "parse_number",
    "numeric_equal",
    "strip_units",
    "loose_text",
    "math_verify_equal",
]
