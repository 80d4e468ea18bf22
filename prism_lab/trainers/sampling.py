"""The one data-order sampler of every trainer: a fresh seeded permutation of the examples per epoch.

The permutation of epoch ``e`` is ``random.Random(derive_seed(seed, stream, e)).shuffle(range(n))``.
The sampler's position is ``(epoch, cursor)``: trainers store it in their resumable state, or
:meth:`EpochSampler.seek` recomputes it from the number of examples already drawn (when nothing is
rejected, ``position = steps_done * examples_per_step``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from prism_lab.errors import DataError
from prism_lab.seeds import derive_seed

__all__ = ["EpochSampler"]


class EpochSampler:
    """Indices ``0..n-1``, epoch after epoch, each epoch a seeded permutation.

    ``accept(i)``: an optional filter (for example "the prompt fits max_prompt_length"); rejected indices
    are skipped, and a whole epoch rejected in a row is a DataError.
    """

    def __init__(self, n: int, seed: int, stream: str, *, accept: Callable[[int], bool] | None = None,
                 what: str = "examples") -> None:
        if n <= 0:
            raise DataError(f"no {what} to sample from")
        self.n, self.seed, self.stream, self.what = n, int(seed), stream, what
        self.accept = accept
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(derive_seed(self.seed, self.stream, epoch)).shuffle(order)
        return order

    def _move_to(self, epoch: int, cursor: int) -> None:
        if epoch != self.epoch or not hasattr(self, "_order"):
            self._order = self._permutation(epoch)
        self.epoch, self.cursor = epoch, cursor

    def take(self, k: int) -> list[int]:
        """The next ``k`` accepted indices."""
        out: list[int] = []
        rejected_in_a_row = 0
        while len(out) < k:
            if self.cursor >= self.n:
                self._move_to(self.epoch + 1, 0)
            i = self._order[self.cursor]
            self.cursor += 1
            if self.accept is None or self.accept(i):
                out.append(i)
                rejected_in_a_row = 0
            else:
                rejected_in_a_row += 1
                if rejected_in_a_row > self.n:
                    raise DataError(f"every one of the {self.n} {self.what} was rejected")
        return out

    def seek(self, position: int) -> None:
        """Stand where ``position`` indices have been drawn (valid when nothing was rejected)."""
        self._move_to(*divmod(int(position), self.n))

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load(self, state: dict[str, Any]) -> None:
        self._move_to(int(state["epoch"]), int(state["cursor"]))
