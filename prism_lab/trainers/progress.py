"""Progress lines for a stage's training loop: the loop's metrics callback, wrapped so that every logged step
still goes to the ledger and W&B, and about twenty of them are also printed to the stage log
(``[rl] step 5/20 reward/mean 0.431 ... elapsed 00:12 eta 00:36``). A 4B RL step takes minutes; without these
lines ``stage.log`` says nothing between "started" and "done"."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prism_lab.trainers.common import StepCallback, format_duration


def _value_text(v: float) -> str:
    return f"{v:.4g}"


class StepProgress:
    """A metrics callback ``(step, values)`` that forwards every call to ``log`` and prints a progress line
    for a step at least ``every`` steps after the last printed one (default: about 20 lines per run), for the
    last step, and for any step that carries one of ``always_keys`` (held-out evaluations). ``total`` None:
    no ETA."""

    def __init__(self, tag: str, log: StepCallback | None, *, total: int | None, keys: Sequence[str],
                 always_keys: Sequence[str] = (), every: int | None = None, enabled: bool = True,
                 print_fn: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tag, self.log = tag, log
        self.keys, self.always_keys = tuple(keys), tuple(always_keys)
        self._every = every
        self.set_total(total)
        self.enabled = enabled
        self.print_fn = print_fn or (lambda line: print(line, flush=True))
        self.clock = clock
        self._t0 = clock()
        self._start: int | None = None  # the step before the first call: where a resumed run started
        self._printed = 0  # last printed step

    def set_total(self, total: int | None) -> None:
        """The run's last step (the recipe loop sets it when the stage could not know it): step/total and ETA."""
        self.total = total
        self.every = self._every or (max(1, total // 20) if total else 10)

    def __call__(self, step: int, values: dict[str, float]) -> None:
        if self.log is not None:
            self.log(step, values)
        if not self.enabled:
            return
        now = self.clock()
        if self._start is None:
            self._start = self._printed = step - 1
        wanted = step - self._printed >= self.every or step == self.total or any(k in values for k in self.always_keys)
        if not wanted or not any(k in values for k in (*self.keys, *self.always_keys)):
            return
        self._printed = step
        self.print_fn(self.line(step, values, now))

    def line(self, step: int, values: dict[str, float], now: float) -> str:
        where = f"step {step}/{self.total}" if self.total else f"step {step}"
        parts = [f"[{self.tag}] {where}"]
        parts += [f"{k} {_value_text(float(values[k]))}" for k in (*self.keys, *self.always_keys) if k in values]
        elapsed = now - self._t0
        parts.append(f"elapsed {format_duration(elapsed)}")
        done = step - (self._start or 0)
        if self.total and done > 0 and step < self.total:
            parts.append(f"eta {format_duration(elapsed / done * (self.total - step))}")
        return " ".join(parts)
