"""The one seed policy: every random stream is derived from (run seed, stream name, index...).

``derive_seed(seed, "rl/rollout", step, k)`` is the first 8 bytes (big-endian) of
``sha256("<seed>:rl/rollout:<step>:<k>")``: independent streams for different names and indices, the
same value on every machine and Python version (unlike ``hash()``), and no arithmetic that could make
two streams collide (``seed * 1_000_003 + epoch`` does for seed 0 / epoch 1_000_003 and seed 1 / epoch 0).
Streams are named ``<stage>/<what>``; the synthetic data generator uses its own names (``public``,
``bench:<name>``, ...), which keeps its output byte-identical to the generator's earlier versions.
"""

from __future__ import annotations

import hashlib

__all__ = ["derive_seed"]


def derive_seed(seed: int, stream: str, *index: int | str) -> int:
    """A 64-bit seed for the stream ``stream`` (at ``index``) of the run seeded with ``seed``."""
    text = ":".join(str(p) for p in (int(seed), stream, *index))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
