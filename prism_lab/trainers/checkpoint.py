"""Every checkpoint a trainer writes or reads: the resumable state (one process or sharded) and the final HF save.

One module on purpose: the trainers call :func:`save_resume` / :func:`load_resume` for their resumable state and
:func:`save_hf_checkpoint` / :func:`full_state_dict` for the gathered final weights; nothing else in
``trainers/`` writes or reads a checkpoint.

Single-process resumable state (one directory, replaced atomically on every save)::

    <dir>/model.safetensors   weights of the trained module (safetensors; shared tensors handled)
    <dir>/optimizer.pt        optimizer.state_dict()          (torch.save of plain tensors/numbers)
    <dir>/trainer_state.pt    scheduler state, RNG states, and the trainer's own ``meta`` dict
    <dir>/meta.json           the same ``meta`` as JSON, for people and tools

A sharded run (torchrun, FSDP2) keeps it as a distributed checkpoint (``torch.distributed.checkpoint``): every
rank writes its own shard, and a state saved at one world size loads at another (DCP reshards on load).
:func:`full_state_dict` gathers the sharded weights into one ordinary state dict on rank 0
(``torch.distributed.checkpoint.state_dict.get_model_state_dict`` with ``full_state_dict`` and ``cpu_offload``),
which ``save_pretrained`` writes as plain HF safetensors: no merge step.

Only files this module wrote are read back, and always with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prism_lab.errors import CheckpointError
from prism_lab.trainers.distributed import SINGLE, DistEnv, barrier, broadcast_object

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.pt"
META_FILE = "meta.json"

#: The subdirectory of a run's out_dir where every trainer keeps its resumable state.
RESUME_DIR = "resume"


# ------------------------------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU + CUDA) RNG states, as plain tensors/numbers (weights_only-safe)."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    out: dict[str, Any] = {
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError) as exc:  # a different number of GPUs than when it was saved
            log.warning("could not restore CUDA RNG state (%s)", exc)


# ------------------------------------------------------------------------------------------ resumable state
def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def save_resume_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    meta: dict[str, Any],
) -> Path:
    """Write model, optimizer, scheduler, RNG states and ``meta`` to ``directory`` atomically.

    The files go to a sibling temp directory first, which then replaces ``directory`` by renames, so a
    crash at any point leaves either the old or the new state (``load_resume_state`` also finds the old
    one under ``<name>.old`` if the crash hit between the two renames).
    """
    from safetensors.torch import save_model

    d = Path(directory)
    tmp = fresh_temp_dir(d)
    save_model(_unwrap(model), str(tmp / MODEL_FILE))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    torch.save({"scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rng_state(),
                "meta": meta}, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return swap_into_place(tmp, d)


def fresh_temp_dir(target: Path) -> Path:
    """An empty sibling temp directory to build ``target`` in (see :func:`swap_into_place`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def swap_into_place(tmp: Path, target: Path) -> Path:
    """Replace ``target`` with the finished ``tmp`` by renames. A crash at any point leaves the old or the
    new directory, the old one possibly under ``<target>.old`` (:func:`resume_candidates` looks there)."""
    old = target.parent / f"{target.name}.old"
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return target


def resume_candidates(directory: str | Path) -> tuple[Path, Path]:
    """Where a state written by :func:`swap_into_place` may be: the directory, then its ``.old`` twin."""
    d = Path(directory)
    return d, d.parent / f"{d.name}.old"


def find_resume_state(directory: str | Path) -> Path | None:
    """The complete resumable state at ``directory`` (or its ``.old`` twin), or None."""
    for cand in resume_candidates(directory):
        if (cand / STATE_FILE).is_file() and (cand / MODEL_FILE).is_file():
            return cand
    return None


def load_resume_state(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    restore_rng: bool = True,
) -> dict[str, Any] | None:
    """Restore what :func:`save_resume_state` wrote; returns its ``meta`` (None when there is no state)."""
    from safetensors.torch import load_model

    d = find_resume_state(directory)
    if d is None:
        return None
    try:
        missing, unexpected = load_model(_unwrap(model), str(d / MODEL_FILE), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{d / MODEL_FILE}: does not match the model (missing {sorted(missing)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}); delete {d} to start over")
        state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        if optimizer is not None:
            if not (d / OPTIMIZER_FILE).is_file():
                raise CheckpointError(f"{d}: no {OPTIMIZER_FILE}; delete {d} to start over")
            optimizer.load_state_dict(torch.load(d / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{d}: could not restore the resumable state ({type(exc).__name__}: {exc}); "
                              f"delete {d} to start over") from None
    if restore_rng:
        set_rng_state(state["rng"])
    return dict(state["meta"])


def remove_resume_state(directory: str | Path) -> None:
    """Delete a resumable state and its ``.old`` twin (the stage finished)."""
    for cand in resume_candidates(directory):
        if cand.exists():
            shutil.rmtree(cand, ignore_errors=True)


# ------------------------------------------------------------------------------------------ sharded and final
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


def save_hf_checkpoint(model: nn.Module, processor: Any, out_dir: str | Path, env: DistEnv,
                       dtype: torch.dtype | None = None) -> Path | None:
    """Gather the weights and write an ordinary HF checkpoint directory from rank 0 (collective).

    ``model`` may be FSDP-sharded: ``save_pretrained`` is called with the gathered full state dict, so
    the files are the same ``model.safetensors`` + ``config.json`` a single process writes. ``dtype``: the
    floating weights' dtype on disk, stated in ``config.json`` (None: as gathered).
    """
    from prism_lab.models.export_dtype import cast_floating, in_dtype, state_dtype_in_config

    sd = full_state_dict(model, env)
    out = Path(out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if dtype is not None and not in_dtype(sd, dtype):
            sd = cast_floating(sd, dtype)
        model.save_pretrained(str(out), state_dict=sd)
        if dtype is not None:
            state_dtype_in_config(out, dtype)
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


def save_resume(directory: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any | None,
                meta: dict[str, Any], env: DistEnv) -> None:
    """The trainers' one call to write resumable state: sharded (DCP) under torchrun, else the
    single-process files of ``trainers.common.save_resume_state``."""

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



def save_final(model: nn.Module, processor: Any, directory: str | Path, env: DistEnv,
               export_dtype: str | None = None) -> Path | None:
    """The end of every training stage: the trained policy as an ordinary HF checkpoint directory (weights,
    config, processor). A sharded model is gathered on rank 0 into the same files one process writes
    (collective). ``export_dtype`` (``resources.export_dtype``: auto, fp32 or bf16; trainers/precision.py) sets
    the floating weights' dtype on disk, stated in ``config.json``; None writes them as trained (the base stage's
    intermediate checkpoints, which it resumes from). Returns the directory on rank 0, None on the other ranks."""
    from prism_lab.models import save_policy
    from prism_lab.trainers.precision import resolve_export_dtype

    dtype = None
    if export_dtype is not None:
        device_type = env.device.type if env.sharded else next(model.parameters()).device.type
        dtype = resolve_export_dtype(export_dtype, device_type)
    if env.sharded:
        save_hf_checkpoint(model, processor, directory, env, dtype=dtype)
        return Path(directory) if env.is_main else None
    return save_policy(model, processor, directory, dtype=dtype)


# ------------------------------------------------------------------------------------------ alignment (two models)
def save_align_resume(out_dir: str | Path, *, policy: torch.nn.Module, disc: torch.nn.Module,
                      actor_opt: torch.optim.Optimizer, disc_opt: torch.optim.Optimizer, meta: dict,
                      env: DistEnv = SINGLE) -> Path:
    """Atomically replace ``out_dir/resume`` with ``policy/`` and ``discriminator/`` resumable states
    (collective when sharded: each is a DCP checkpoint, every rank writes its shard; rank 0 swaps)."""
    final = Path(out_dir) / RESUME_DIR
    tmp = Path(broadcast_object(str(fresh_temp_dir(final)) if env.is_main else None, env))
    for sub, model, opt in (("policy", policy, actor_opt), ("discriminator", disc, disc_opt)):
        save_resume(tmp / sub, model=model, optimizer=opt, scheduler=None, meta=meta, env=env)
    if env.is_main:
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        swap_into_place(tmp, final)
    barrier(env)
    return final


def load_align_resume(out_dir: str | Path, *, policy: torch.nn.Module, disc: torch.nn.Module,
                      actor_opt: torch.optim.Optimizer, disc_opt: torch.optim.Optimizer,
                      env: DistEnv = SINGLE) -> dict | None:
    """Restore what :func:`save_align_resume` wrote (or its ``.old`` twin); None when there is nothing.

    A state written by N processes loads at any world size (DCP reshards); one written by a single process
    cannot be resumed by several (a CheckpointError naming both sizes, from ``distributed.load_resume``)."""
    for cand in resume_candidates(Path(out_dir) / RESUME_DIR):
        if broadcast_object((cand / "state.json").is_file() if env.is_main else None, env):
            meta = load_resume(cand / "policy", model=policy, optimizer=actor_opt, scheduler=None, env=env)
            dmeta = load_resume(cand / "discriminator", model=disc, optimizer=disc_opt, scheduler=None,
                                      env=env)
            if meta is None or dmeta is None or meta.get("step") != dmeta.get("step"):
                log.warning("incomplete alignment resume state in %s; ignoring it", cand)
                continue
            return meta
    return None
