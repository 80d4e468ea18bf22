"""Multi-process training with FSDP2: process group, sharding, collectives.

A stage run with ``resources.processes > 1`` is started by the executor under ``torchrun``; every
rank runs the same stage code. This module is the one place that knows about that:

* :func:`init_distributed` joins the process group torchrun describes (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``): on GPUs NCCL with a gloo CPU backend beside it (``cpu:gloo,cuda:nccl``, so CPU-offloaded
  tensors can take part in collectives), gloo on CPU; and picks the rank's device (``cuda:LOCAL_RANK``).
  Every collective waits at most :func:`collective_timeout` (``$PRISM_LAB_COLLECTIVE_TIMEOUT_S``, default 2 hours:
  torch's 10-minute default is shorter than rank 0 generating a warm-up's student answers while the others wait).
  Stage runs call it once, through :func:`prism_lab.trainers.recipe.start_run`.
* :func:`shard_model` applies ``torch.distributed.fsdp.fully_shard`` (FSDP2) to every transformer
  block (the classes a Hugging Face model lists in ``_no_split_modules``: decoder layers and vision
  blocks), then to the root, with a ``MixedPrecisionPolicy`` and optional ``CPUOffloadPolicy``
  (PyTorch FSDP2 docs, ``torch.distributed.fsdp.fully_shard``, torch 2.13).
* the collectives the trainers use (sums, gathers, broadcasts, barriers).

The checkpoints of a sharded run (DCP resumable state, the gathered HF save) are in
:mod:`prism_lab.trainers.checkpoint`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from prism_lab.config.collective_timeout import (  # noqa: F401  (re-exported)
    COLLECTIVE_TIMEOUT_ENV,
    DEFAULT_COLLECTIVE_TIMEOUT_S,
    collective_timeout_s,
)
from prism_lab.errors import ConfigError

T = TypeVar("T")

#: torch's names for the dtypes a ResourcesConfig may name.
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, the world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1


SINGLE = DistEnv()

def collective_timeout(environ: dict[str, str] | None = None) -> datetime.timedelta:
    """How long the process group's collectives wait (:func:`prism_lab.config.collective_timeout.collective_timeout_s`)."""
    return datetime.timedelta(seconds=collective_timeout_s(environ))


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_distributed(expected_world_size: int | None = None) -> DistEnv:
    """Join torchrun's process group (once per process) and return this rank's :class:`DistEnv`.

    Outside torchrun (no ``WORLD_SIZE`` or 1) nothing is initialised and the single-process env is
    returned with the default device. ``expected_world_size`` (the stage's ``resources.processes``)
    must match torchrun's world size: a mismatch is a ConfigError rather than a silently different run.
    """
    world = env_world_size()
    if expected_world_size is not None and expected_world_size != world:
        raise ConfigError(f"resources.processes is {expected_world_size} but this process runs with WORLD_SIZE={world}; "
                          "start multi-process stage runs with `prism-lab sweep run` (it launches torchrun)")
    use_cuda = torch.cuda.is_available()
    if world <= 1:
        return DistEnv(device=torch.device("cuda" if use_cuda else "cpu"))
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    timeout = collective_timeout()  # read before joining: a bad value fails every rank alike
    if not dist.is_initialized():
        # a CPU backend beside NCCL: CPU-offloaded tensors (and CPU objects) can take part in collectives
        dist.init_process_group("cpu:gloo,cuda:nccl" if use_cuda else "gloo", device_id=device if use_cuda else None,
                                timeout=timeout)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=device)


def shard_slice(items: Sequence[T], env: DistEnv) -> list[T]:
    """This rank's share of a global batch: every ``world_size``-th item from ``rank`` (same global
    batch at any world size; each rank's share differs in size by at most one)."""
    return list(items[env.rank::env.world_size])


# ------------------------------------------------------------------------------------------ collectives
def all_reduce_sum(value: float, env: DistEnv) -> float:
    """Sum of a Python number over ranks (the number itself when not sharded)."""
    if not env.sharded:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(env))
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_max(value: float, env: DistEnv) -> float:
    """Largest value of a Python number over ranks (the number itself when not sharded)."""
    if not env.sharded:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather_objects(obj: T, env: DistEnv) -> list[T]:
    """Every rank's ``obj`` in rank order (``[obj]`` when not sharded)."""
    if not env.sharded:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, env: DistEnv) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not env.sharded:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.sharded:
        dist.barrier()


def _comm_device(env: DistEnv) -> torch.device:
    return env.device if env.device.type == "cuda" else torch.device("cpu")


# ------------------------------------------------------------------------------------------ sharding
def block_classes(model: nn.Module) -> set[str]:
    """Names of the transformer-block classes of every HF model inside ``model`` (``_no_split_modules``)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard_model(model: nn.Module, env: DistEnv, *, param_dtype: torch.dtype, reduce_dtype: torch.dtype,
                offload: bool) -> list[nn.Module]:
    """FSDP2-shard ``model`` in place: each transformer block, then the root. Returns the blocks.

    ``param_dtype`` is the dtype the all-gathered parameters compute in; ``reduce_dtype`` the dtype of
    the gradient reduce-scatter; the sharded parameters (what AdamW updates) keep the model's dtype.
    ``offload`` keeps sharded parameters, gradients and hence optimizer state in host memory
    (``CPUOffloadPolicy``; pinned only on a GPU, pinning needs an accelerator).
    """
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        MixedPrecisionPolicy,
        fully_shard,
    )

    # FSDP2 warns that the root returns a view (the logits); nothing here edits logits in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    names = block_classes(model)
    if not names:
        raise ConfigError(f"{type(model).__name__}: no transformer block classes (_no_split_modules) to shard")
    kw: dict[str, Any] = {}
    master = next(model.parameters()).dtype
    if param_dtype != master or reduce_dtype != master:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=env.device.type == "cuda")
    if env.device.type == "cuda" and not offload:  # with offload fully_shard keeps the shards in host memory
        model.to(env.device)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    for block in blocks:
        fully_shard(block, **kw)
    fully_shard(model, **kw)
    return blocks


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing in every HF model inside ``model`` (non-reentrant, which
    composes with FSDP2); returns how many models it was turned on in."""
    n = 0
    for m in model.modules():
        if getattr(m, "supports_gradient_checkpointing", False) and hasattr(m, "gradient_checkpointing_enable"):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            n += 1
            break  # the outermost HF model enables it for all of its submodules
    return n


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (a plain tensor unchanged): for grad norms and metrics."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t



@contextlib.contextmanager
def main_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. writes a cache), the others after it."""
    if not env.is_main:
        barrier(env)
    yield
    if env.is_main:
        barrier(env)


# ------------------------------------------------------------------------------------------ training setup
def resolve_dtypes(resources: Any, mixed_precision: str) -> tuple[torch.dtype, torch.dtype, torch.dtype]:
    """(param, reduce, master) dtypes of a sharded run. ``param_dtype: auto`` follows the stage's
    resolved precision (``mixed_precision`` "bf16" or "no")."""
    pd = resources.param_dtype
    if pd == "auto":
        pd = "bf16" if mixed_precision == "bf16" else "fp32"
    return _DTYPES[pd], _DTYPES[resources.reduce_dtype], _DTYPES[resources.master_dtype]


class ShardedAccelerator:
    """The part of ``accelerate.Accelerator``'s API the trainers use, for an FSDP2-sharded run.

    ``prepare`` turns on gradient checkpointing (when asked), casts the master weights to
    ``master_dtype`` and shards the model; mixed precision is FSDP2's ``MixedPrecisionPolicy`` (so
    ``autocast`` is a no-op). ``backward(loss)`` takes this rank's share of the global loss (the
    shares sum to the global loss): FSDP2 averages gradients over ranks, so it scales by the world size.
    """

    def __init__(self, env: DistEnv, resources: Any, mixed_precision: str) -> None:
        self.env = env
        self.resources = resources
        self.param_dtype, self.reduce_dtype, self.master_dtype = resolve_dtypes(resources, mixed_precision)
        self.device = env.device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.resources.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if next(model.parameters()).dtype != self.master_dtype:
            model.to(self.master_dtype)
        shard_model(model, self.env, param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype,
                    offload=self.resources.offload and self.env.device.type == "cuda")
        return model

    def autocast(self):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.env.world_size).backward()

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model



def all_true(flag: bool, env: DistEnv) -> bool:
    """True when ``flag`` is true on every rank (collective)."""
    if not env.sharded:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sync_engine(engine: Any, env: DistEnv) -> None:
    """Make a rollout engine that runs the sharded model keep every rank's forward passes in step (an engine that
    samples on its rank alone, ``generates_locally``, needs nothing: the colocated vLLM engine)."""
    if not env.sharded or getattr(engine, "generates_locally", False):
        return
    if getattr(engine, "kind", None) != "hf":
        raise ConfigError(f"rollout engine {getattr(engine, 'kind', type(engine).__name__)!r} with resources.processes > 1 "
                          "is not supported yet; use rollout_engine: hf")
    engine.all_finished = lambda done: all_true(done, env)
    engine.synced = True


def finish(env: DistEnv) -> None:
    """End of a stage run's work on every rank: wait for all, then leave the process group (rank 0
    then records the run and renames its directory)."""
    if env.sharded and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

