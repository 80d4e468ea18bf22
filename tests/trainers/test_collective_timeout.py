"""The process group's collective timeout: $PRISM_LAB_COLLECTIVE_TIMEOUT_S, with a default longer than torch's."""

from __future__ import annotations

import datetime

import pytest

from prism_lab.errors import ConfigError
from prism_lab.trainers.distributed import COLLECTIVE_TIMEOUT_ENV, collective_timeout

TORCH_DEFAULT = datetime.timedelta(minutes=10)  # torch.distributed's default for gloo and NCCL groups


def test_the_default_outlasts_torchs_ten_minutes_for_rank_0s_warmup_generation():
    assert collective_timeout({}) == datetime.timedelta(hours=2) > TORCH_DEFAULT
    assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: " "}) == datetime.timedelta(hours=2)


def test_the_environment_sets_it_in_seconds():
    assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: "90"}) == datetime.timedelta(seconds=90)
    assert collective_timeout({COLLECTIVE_TIMEOUT_ENV: "1.5"}) == datetime.timedelta(seconds=1.5)


@pytest.mark.parametrize("raw", ["0", "-5", "ten", "inf", "nan"])
def test_a_bad_value_is_one_line_naming_the_variable(raw):
    with pytest.raises(ConfigError, match=r"\$PRISM_LAB_COLLECTIVE_TIMEOUT_S: expected a positive number") as exc:
        collective_timeout({COLLECTIVE_TIMEOUT_ENV: raw})
    assert "\n" not in str(exc.value)
