"""DAPO pieces: soft overlong penalty, zero-variance group filtering, dynamic sampling.

- Overlong reward shaping (DAPO reward manager in verl)::

      penalty(L) = min( -(L - (L_max - L_buf)) / L_buf * factor , 0 )

  0 up to ``L_max - L_buf`` tokens, then linear down to ``-factor`` at ``L_max``; added to the
  correctness reward. (Generation is hard-capped at ``L_max``, so the paper's -1 tail for
  ``L > L_max`` never triggers; lengths above ``L_max`` just keep the linear slope.)
- Dynamic sampling (group filtering): a group (same prompt uid) whose filter metric has zero
  POPULATION standard deviation (numpy ``np.std``, ddof=0) — all correct or all wrong — carries no
  GRPO signal and is dropped. Groups of size 1 are always kept (verl recipe). Zero population std
  is tested exactly as "all values equal", which is what ``std == 0`` means without the float
  noise that ``np.std`` can add for values such as 0.1.
- :func:`accumulate_until`: draw generation batches, keep the surviving groups, stop once at
  least ``target_groups`` groups are kept, truncate to exactly ``target_groups`` (whole groups,
  in order of appearance), and raise :class:`prism_lab.errors.PrismError` when
  ``max_num_gen_batches`` batches (> 0) did not yield enough.

Pure torch/Python; no I/O, no models.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch import Tensor

from prism_lab.algos.advantages import GroupIds, group_index
from prism_lab.errors import PrismError

__all__ = [
    "DynamicSamplingResult",
    "GenBatch",
    "accumulate_until",
    "filter_groups",
    "group_population_std",
    "overlong_penalty",
    "zero_variance_groups",
]

T = TypeVar("T")


def overlong_penalty(
    lengths: Tensor | Sequence[int],
    *,
    max_len: int,
    buffer_len: int,
    factor: float = 1.0,
) -> Tensor:
    """``min(-(L - (max_len - buffer_len)) / buffer_len * factor, 0)`` per response length ``L`` (float32)."""
    if buffer_len <= 0:
        raise ValueError(f"buffer_len must be > 0, got {buffer_len}")
    if buffer_len > max_len:
        raise ValueError(f"buffer_len ({buffer_len}) must not exceed max_len ({max_len})")
    lens = torch.as_tensor(lengths, dtype=torch.float32)
    expected = float(max_len - buffer_len)
    pen = -(lens - expected) / float(buffer_len) * float(factor)
    return torch.clamp(pen, max=0.0)


def _values_list(values: Tensor | Sequence[float]) -> list[float]:
    if isinstance(values, Tensor):
        return [float(v) for v in values.detach().reshape(-1).tolist()]
    return [float(v) for v in values]


def _groups(values: Tensor | Sequence[float], group_ids: GroupIds) -> tuple[list[float], list[int], list[Hashable]]:
    vals = _values_list(values)
    idx, uniq = group_index(group_ids, len(vals))
    return vals, idx.tolist(), uniq


def group_population_std(values: Tensor | Sequence[float], group_ids: GroupIds) -> dict[Hashable, float]:
    """Population standard deviation (ddof=0, as ``np.std``) of ``values`` per group id (float64)."""
    vals, idx, uniq = _groups(values, group_ids)
    members: list[list[float]] = [[] for _ in uniq]
    for v, g in zip(vals, idx):
        members[g].append(v)
    out: dict[Hashable, float] = {}
    for gid, vs in zip(uniq, members):
        t = torch.tensor(vs, dtype=torch.float64)
        out[gid] = 0.0 if min(vs) == max(vs) else float(t.std(correction=0))
    return out


def zero_variance_groups(values: Tensor | Sequence[float], group_ids: GroupIds) -> set[Hashable]:
    """Ids of groups to DROP: at least 2 samples and population std 0 (all values equal)."""
    vals, idx, uniq = _groups(values, group_ids)
    lo = [float("inf")] * len(uniq)
    hi = [float("-inf")] * len(uniq)
    count = [0] * len(uniq)
    for v, g in zip(vals, idx):
        lo[g] = min(lo[g], v)
        hi[g] = max(hi[g], v)
        count[g] += 1
    return {gid for gid, a, b, c in zip(uniq, lo, hi, count) if c >= 2 and a == b}


def filter_groups(values: Tensor | Sequence[float], group_ids: GroupIds) -> Tensor:
    """Boolean keep mask ``[B]``: False for samples of :func:`zero_variance_groups` (size-1 groups kept)."""
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    drop = zero_variance_groups(values, ids)
    return torch.tensor([g not in drop for g in ids], dtype=torch.bool)


@dataclass(frozen=True)
class GenBatch(Generic[T]):
    """One generation batch for :func:`accumulate_until`.

    ``payload`` is whatever the trainer needs later (it is returned untouched); ``values`` is the
    filter metric per sample (e.g. ``acc``) and ``group_ids`` the prompt uid per sample.
    """

    payload: T
    values: Tensor | Sequence[float]
    group_ids: GroupIds


@dataclass(frozen=True)
class DynamicSamplingResult(Generic[T]):
    """Outcome of :func:`accumulate_until`.

    ``batches``: every generation batch drawn, in order; ``selected[k]``: indices of the samples of
    ``batches[k]`` that made it into the training batch (whole groups, after truncation).
    Group counts are over all drawn batches: ``num_groups_filtered / num_groups_seen`` is the
    share of zero-variance groups.
    """

    batches: list[GenBatch[T]]
    selected: list[list[int]]
    num_gen_batches: int
    num_groups_seen: int
    num_groups_filtered: int
    num_groups_kept: int
    num_groups_discarded_by_truncation: int = field(default=0)

    @property
    def filtered_share(self) -> float:
        """Share of drawn groups dropped for zero variance (0.0 when nothing was drawn)."""
        return self.num_groups_filtered / self.num_groups_seen if self.num_groups_seen else 0.0

    def metrics(self, prefix: str = "dapo/") -> dict[str, float]:
        """Plain floats for logging."""
        return {
            f"{prefix}num_gen_batches": float(self.num_gen_batches),
            f"{prefix}groups_seen": float(self.num_groups_seen),
            f"{prefix}groups_filtered": float(self.num_groups_filtered),
            f"{prefix}filtered_share": self.filtered_share,
            f"{prefix}groups_kept": float(self.num_groups_kept),
        }


def accumulate_until(
    produce: Callable[[int], GenBatch[T]],
    *,
    target_groups: int,
    max_num_gen_batches: int = 10,
    enabled: bool = True,
) -> DynamicSamplingResult[T]:
    """Draw batches with ``produce(k)`` (k = 0, 1, ...) until ``target_groups`` groups survive filtering.

    Groups are identified per batch (``(k, group_id)``), so reused uids across batches never merge.
    Surviving groups are taken in order of appearance (batch, then first sample of the group) and
    the result is truncated to exactly ``target_groups`` whole groups. After
    ``max_num_gen_batches`` batches without enough survivors a :class:`PrismError` is raised;
    ``max_num_gen_batches <= 0`` means no limit (beware: then data with no learnable group loops
    forever). ``enabled=False`` draws one batch and keeps all of it (no filtering, no truncation).
    """
    if target_groups <= 0:
        raise ValueError(f"target_groups must be > 0, got {target_groups}")
    batches: list[GenBatch[T]] = []
    kept: list[tuple[int, list[int]]] = []  # (batch index, sample indices of one surviving group)
    seen = filtered = 0
    k = 0
    while True:
        batch = produce(k)
        batches.append(batch)
        vals, idx, uniq = _groups(batch.values, batch.group_ids)
        members: list[list[int]] = [[] for _ in uniq]
        for i, g in enumerate(idx):
            members[g].append(i)
        if not enabled:
            return DynamicSamplingResult(
                batches=batches,
                selected=[list(range(len(vals)))],
                num_gen_batches=1,
                num_groups_seen=len(uniq),
                num_groups_filtered=0,
                num_groups_kept=len(uniq),
            )
        seen += len(uniq)
        for rows in members:
            group_vals = [vals[i] for i in rows]
            if len(rows) >= 2 and min(group_vals) == max(group_vals):
                filtered += 1
            else:
                kept.append((k, rows))
        k += 1
        if len(kept) >= target_groups:
            break
        if 0 < max_num_gen_batches <= k:
            raise PrismError(
                f"dynamic sampling: only {len(kept)} of the {target_groups} prompt groups needed survived "
                f"zero-variance filtering after {k} generation batches (max_num_gen_batches="
                f"{max_num_gen_batches}; {filtered} of {seen} groups were all-equal). The data are probably "
                "too easy or too hard for the policy: raise algorithm.filter_groups.max_num_gen_batches "
                "(<= 0 = unlimited) or gen_batch_multiplier, or disable filter_groups."
            )
    selected: list[list[int]] = [[] for _ in batches]
    for b, rows in kept[:target_groups]:
        selected[b].extend(rows)
    for rows in selected:
        rows.sort()
    return DynamicSamplingResult(
        batches=batches,
        selected=selected,
        num_gen_batches=len(batches),
        num_groups_seen=seen,
        num_groups_filtered=filtered,
        num_groups_kept=target_groups,
        num_groups_discarded_by_truncation=len(kept) - target_groups,
    )
