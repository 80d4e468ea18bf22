"""The one seed policy (prism_lab.seeds) and the one data-order sampler (trainers/sampling.py)."""

from __future__ import annotations

import hashlib
import random

import pytest

from prism_lab.errors import DataError
from prism_lab.seeds import derive_seed
from prism_lab.trainers.sampling import EpochSampler


def test_derive_seed_is_the_first_8_bytes_of_sha256_of_the_joined_parts():
    assert derive_seed(0, "sft/data", 1) == 16282229831084998365  # sha256(b"0:sft/data:1")[:8], big-endian
    assert derive_seed(0, "sft/data", 1) == int.from_bytes(hashlib.sha256(b"0:sft/data:1").digest()[:8], "big")
    assert derive_seed(42, "rl/rollout", 3, 1) == 7413564718707466673


def test_streams_and_indices_never_share_a_seed_where_the_old_arithmetic_did():
    # the old warm-up order used seed * 1_000_003 + epoch: (0, 1_000_003) and (1, 0) collided
    assert derive_seed(0, "warmup/pairs", 1_000_003) != derive_seed(1, "warmup/pairs", 0)
    seeds = {derive_seed(s, stream, i) for s in range(3) for stream in ("sft/data", "rl/prompts") for i in range(50)}
    assert len(seeds) == 3 * 2 * 50


def test_the_synthetic_generator_keeps_its_streams():
    """data/synth derived its streams as sha256("seed:name:i"); derive_seed gives the same numbers, so the
    generated data (and every data fingerprint) is unchanged."""
    old = int.from_bytes(hashlib.sha256(b"7:bench:synth-reasoning:12").digest()[:8], "big")
    assert derive_seed(7, "bench:synth-reasoning", 12) == old


def test_epoch_sampler_permutes_every_epoch_and_resumes_exactly():
    s = EpochSampler(5, 3, "sft/data")
    first = s.take(5)
    assert sorted(first) == [0, 1, 2, 3, 4]
    expected = list(range(5))
    random.Random(derive_seed(3, "sft/data", 0)).shuffle(expected)
    assert first == expected
    nxt = s.take(7)  # crosses into epoch 2
    assert sorted(nxt[:5]) == [0, 1, 2, 3, 4] and s.state() == {"epoch": 2, "cursor": 2}
    assert EpochSampler(5, 3, "sft/data").take(12) == first + nxt
    resumed = EpochSampler(5, 3, "sft/data")
    resumed.load({"epoch": 1, "cursor": 3})
    assert resumed.take(4) == nxt[3:7]
    seeked = EpochSampler(5, 3, "sft/data")
    seeked.seek(8)
    assert seeked.take(4) == nxt[3:7]
    assert EpochSampler(5, 3, "rl/prompts").take(12) != first + nxt  # another stream, another order


def test_epoch_sampler_skips_rejected_indices_and_fails_loudly_when_all_are():
    s = EpochSampler(6, 0, "rl/prompts", accept=lambda i: i % 2 == 0)
    assert all(i % 2 == 0 for i in s.take(7))
    with pytest.raises(DataError, match="every one of the 4 RL prompts"):
        EpochSampler(4, 0, "rl/prompts", accept=lambda i: False, what="RL prompts").take(1)
    with pytest.raises(DataError, match="no SFT examples"):
        EpochSampler(0, 0, "sft/data", what="SFT examples")
