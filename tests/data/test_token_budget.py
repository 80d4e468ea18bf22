"""The token-budget grouping of micro-batches (prism_lab/data/token_budget.py) against hand-cut groupings."""

from __future__ import annotations

import pytest

from prism_lab.data.token_budget import over_budget, token_budget_groups


@pytest.mark.parametrize(("lengths", "budget", "groups"), [
    ([4, 3, 3, 5, 1], 7, [[0, 1], [2], [3, 4]]),      # 4+3 fills 7; 3+5 > 7; 5+1 fits
    ([2, 2, 2, 2], 8, [[0, 1, 2, 3]]),                # all fit exactly
    ([2, 2, 2, 2], 3, [[0], [1], [2], [3]]),          # no two fit
    ([1, 9, 1, 1], 5, [[0], [1], [2, 3]]),            # 9 > 5 alone: its own micro-batch, not dropped
    ([9], 5, [[0]]),
    ([], 5, []),
])
def test_rows_are_cut_in_order_within_the_budget(lengths, budget, groups):
    assert token_budget_groups(lengths, budget) == groups


def test_every_row_is_kept_once_in_order():
    lengths = [7, 1, 12, 3, 3, 3, 30, 2]
    groups = token_budget_groups(lengths, 10)
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 10 or len(g) == 1 for g in groups)


def test_rows_over_the_budget_are_named():
    assert over_budget([1, 9, 5, 6], 5) == [1, 3]


def test_a_budget_below_one_is_refused():
    with pytest.raises(ValueError, match="token budget"):
        token_budget_groups([1], 0)
