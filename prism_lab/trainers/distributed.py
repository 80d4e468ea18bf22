"""Multi-process training with FSDP2: process group, sharding, rank-0 checkpoints, sharded resume.

A stage run with ``resources.processes > 1`` is started by the executor under ``torchrun``; every
rank runs the same stage code. This module is the one place that knows about that:

* :func:`init_distributed` joins the process group torchrun describes (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``): NCCL on GPUs, gloo on CPU, and picks the rank's device (``cuda:LOCAL_RANK``).
* :func:`shard_model` applies ``torch.distributed.fsdp.fully_shard`` (FSDP2) to every transformer
  block (the classes a Hugging Face model lists in ``_no_split_modules``: decoder layers and vision
  blocks), then to the root, with a ``MixedPrecisionPolicy`` and optional ``CPUOffloadPolicy``
  (PyTorch FSDP2 docs, ``torch.distributed.fsdp.fully_shard``, torch 2.13).
* :func:`full_state_dict` gathers the sharded weights into one ordinary state dict on rank 0
  (``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with ``full_state_dict`` and
  ``cpu_offload``), which ``save_pretrained`` writes as plain HF safetensors: no merge step.
* :func:`save_sharded` / :func:`load_sharded` keep the resumable state (model + optimizer) as a
  distributed checkpoint (``torch.distributed.checkpoint``): every rank writes its own shard, and a
  state saved at one world size loads at another (DCP reshards on load).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from prism_lab.errors import CheckpointError, ConfigError

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
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
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


# ------------------------------------------------------------------------------------------ checkpoints
def full_state_dict(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on CPU: on rank 0 when sharded (empty on the other ranks);
    a plain CPU copy when not. Collective: every rank must call it."""
    if not env.sharded:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_hf_checkpoint(model: nn.Module, processor: Any, out_dir: str | Path, env: DistEnv) -> Path | None:
    """Gather the weights and write an ordinary HF checkpoint directory from rank 0 (collective).

    ``model`` may be FSDP-sharded: ``save_pretrained`` is called with the gathered full state dict, so
    the files are the same ``model.safetensors`` + ``config.json`` a single process writes.
    """
    sd = full_state_dict(model, env)
    out = Path(out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), state_dict=sd)
        if processor is not None:
            processor.save_pretrained(str(out))
    barrier(env)
    return out if env.is_main else None


SHARDED_DIR = "dcp"
SHARDED_META = "sharded.json"


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


def save_sharded(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any | None, meta: dict[str, Any], env: DistEnv) -> Path:
    """Write the resumable state of a sharded run atomically (collective).

    Layout: ``dcp/`` (model + optimizer, one file per rank, ``torch.distributed.checkpoint``),
    ``rng_rank<r>.pt`` (each rank's RNG states), ``trainer_state.pt`` (scheduler + ``meta``) and
    ``sharded.json`` (``meta`` plus ``world_size``). Everything goes to a temp directory that rank 0
    swaps into place once every rank has written.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from prism_lab.trainers.common import (
        STATE_FILE,
        fresh_temp_dir,
        rng_state,
        swap_into_place,
    )

    d = Path(directory)
    tmp = broadcast_object(str(fresh_temp_dir(d)) if env.is_main else None, env)
    tmp_p = Path(tmp)
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_p / SHARDED_DIR))
    torch.save(rng_state(), tmp_p / _rng_file(env.rank))
    barrier(env)
    if env.is_main:
        torch.save({"scheduler": scheduler.state_dict() if scheduler is not None else None, "meta": meta},
                   tmp_p / STATE_FILE)
        (tmp_p / SHARDED_META).write_text(json.dumps({**meta, "world_size": env.world_size}, indent=2,
                                                     sort_keys=True, default=str))
        swap_into_place(tmp_p, d)
    barrier(env)
    return d


def find_sharded_state(directory: str | Path) -> Path | None:
    from prism_lab.trainers.common import resume_candidates

    for cand in resume_candidates(directory):
        if (cand / SHARDED_META).is_file() and (cand / SHARDED_DIR / ".metadata").is_file():
            return cand
    return None


def load_sharded(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any | None, env: DistEnv) -> dict[str, Any] | None:
    """Restore what :func:`save_sharded` wrote (collective); returns its ``meta`` or None.

    A state saved at another world size loads too: DCP reshards model and optimizer, and the data
    position is global. Only the per-rank RNG streams cannot carry over; they are kept as seeded
    (the trainers draw sampling seeds from (seed, step), so only dropout would differ).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    from prism_lab.trainers.common import STATE_FILE, set_rng_state

    found = broadcast_object(str(find_sharded_state(directory) or "") if env.is_main else None, env)
    if not found:
        return None
    d = Path(found)
    try:
        saved = json.loads((d / SHARDED_META).read_text())
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optim": osd}
        dcp.load(state, checkpoint_id=str(d / SHARDED_DIR))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        trainer = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        if scheduler is not None and trainer.get("scheduler") is not None:
            scheduler.load_state_dict(trainer["scheduler"])
        if int(saved.get("world_size", 0)) == env.world_size and (d / _rng_file(env.rank)).is_file():
            set_rng_state(torch.load(d / _rng_file(env.rank), map_location="cpu", weights_only=True))
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{d}: could not restore the sharded resumable state ({type(exc).__name__}: {exc}); "
                              f"delete {d} to start over") from None
    barrier(env)
    return dict(trainer["meta"])


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

    def clip_grad_norm_(self, params, max_norm: float) -> torch.Tensor:
        return local_tensor(torch.nn.utils.clip_grad_norm_(list(params), max_norm))

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        return model


def save_resume(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None,
                meta: dict[str, Any], env: DistEnv) -> None:
    """The trainers' one call to write resumable state: sharded (DCP) under torchrun, else the
    single-process files of ``trainers.common.save_resume_state``."""
    from prism_lab.trainers.common import save_resume_state

    if env.sharded:
        save_sharded(directory, model=model, optimizer=optimizer, scheduler=scheduler, meta=meta, env=env)
    else:
        save_resume_state(directory, model=model, optimizer=optimizer, scheduler=scheduler, meta=meta)


def load_resume(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None,
                env: DistEnv) -> dict[str, Any] | None:
    """Restore whichever resumable state ``directory`` holds; returns its ``meta`` (None: start fresh).

    Sharded state loads at any world size, one process included (DCP reshards). A single-process
    state cannot be resumed by a sharded run: that is a CheckpointError naming both sizes.
    """
    from prism_lab.trainers.common import find_resume_state, load_resume_state

    if env.sharded:
        single = broadcast_object(find_resume_state(directory) is not None if env.is_main else None, env)
        if single:
            raise CheckpointError(
                f"{directory}: the resumable state was written by 1 process and this run has {env.world_size}; "
                "finish it with resources.processes: 1, or delete it to start over")
        return load_sharded(directory, model=model, optimizer=optimizer, scheduler=scheduler, env=env)
    if find_resume_state(directory) is not None:
        return load_resume_state(directory, model=model, optimizer=optimizer, scheduler=scheduler)
    return load_sharded(directory, model=model, optimizer=optimizer, scheduler=scheduler, env=env)


def all_true(flag: bool, env: DistEnv) -> bool:
    """True when ``flag`` is true on every rank (collective)."""
    if not env.sharded:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device(env))
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sync_engine(engine: Any, env: DistEnv) -> None:
    """Make a rollout engine that runs the sharded model keep every rank's forward passes in step."""
    if not env.sharded:
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

