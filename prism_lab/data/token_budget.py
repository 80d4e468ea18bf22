"""Micro-batches cut by a token budget instead of a row count (verl's dynamic batch size,
``ppo_max_token_len_per_gpu``): pure functions on sequence lengths, no torch.

:func:`token_budget_groups` cuts the rows of a mini-batch, in order, into runs whose summed unpadded
length (prompt + response tokens) stays within the budget. A row longer than the budget alone gets a
run of its own (never dropped); :func:`over_budget` names those rows so the caller can warn.
The loss does not depend on the cut: the shared update aggregates with the mini-batch totals
(prism_lab/algos/aggregation.py, "Micro-batching contract").
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["over_budget", "token_budget_groups"]


def token_budget_groups(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Positions ``0..len(lengths)-1`` cut greedily in order into runs whose lengths sum to at most ``budget``;
    a single length over ``budget`` forms a run of its own."""
    if budget < 1:
        raise ValueError(f"token budget must be >= 1, got {budget}")
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and used + n > budget:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        groups.append(current)
    return groups


def over_budget(lengths: Sequence[int], budget: int) -> list[int]:
    """Positions whose length alone exceeds ``budget`` (each is a micro-batch of one row)."""
    return [i for i, n in enumerate(lengths) if n > budget]
