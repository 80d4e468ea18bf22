"""How long a sharded run's collectives wait: ``$PRISM_LAB_COLLECTIVE_TIMEOUT_S``, read without torch.

The stage process reads it when it joins the process group (:mod:`prism_lab.trainers.distributed`); ``sweep run``
and ``tune`` read it in their pre-flight, so a bad value is refused with one line before any stage starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prism_lab.errors import ConfigError

__all__ = ["COLLECTIVE_TIMEOUT_ENV", "DEFAULT_COLLECTIVE_TIMEOUT_S", "collective_timeout_s"]

#: The environment variable that sets how long a collective (a barrier included) waits for every rank, in seconds.
COLLECTIVE_TIMEOUT_ENV = "PRISM_LAB_COLLECTIVE_TIMEOUT_S"
#: Its default: 2 hours, room for rank 0's longest solo phase (generating and caching the warm-up's student
#: answers with `student_source: policy`, or an eval's generations) while the other ranks wait on a barrier.
DEFAULT_COLLECTIVE_TIMEOUT_S = 2 * 3600


def collective_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """``$PRISM_LAB_COLLECTIVE_TIMEOUT_S`` as seconds (a positive, finite number), else
    :data:`DEFAULT_COLLECTIVE_TIMEOUT_S`. Anything else is a ConfigError naming the variable."""
    raw = (os.environ if environ is None else environ).get(COLLECTIVE_TIMEOUT_ENV, "").strip()
    if not raw:
        return float(DEFAULT_COLLECTIVE_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigError(f"${COLLECTIVE_TIMEOUT_ENV}: expected a positive number of seconds, got {raw!r}")
    return seconds
