"""The end of every training stage run, once: save what it trained, leave the process group, and let rank 0
alone write the rest.

:func:`finish_stage` does, in this order,

1. the collective saves, on every rank: the policy as a plain HF checkpoint in ``<out_dir>/model``
   (:func:`~prism_lab.trainers.checkpoint.save_final`, gathered on rank 0 when sharded) and the discriminator's
   full state dict (gathered on rank 0);
2. on a rank other than 0: leave the process group and return ``{}`` (rank 0 writes everything);
3. on rank 0: the prompt convention next to the policy (written, or carried over from the checkpoint the stage
   started from), the discriminator in ``<out_dir>/discriminator``, then the resumable states removed, then the
   stage's own files and summary (``write()``), then leave the process group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prism_lab.prompts import Prompting
from prism_lab.stages.artifacts import DISC_SUBDIR, model_dir

__all__ = ["finish_stage"]


def finish_stage(out_dir: Path, env: Any, *, write: Callable[[], dict], policy: Any = None, processor: Any = None,
                 prompting: Prompting | None = None, prompting_from: Path | None = None, discriminator: Any = None,
                 remove: Sequence[Path] = (), export_dtype: str | None = None) -> dict:
    """Finish a stage run on every rank (see the module docstring); returns the summary ``write()`` made on rank 0,
    ``{}`` on the other ranks.

    ``policy``/``processor``: the trained policy (None: the stage trains none). ``prompting``: the convention to
    write next to it, or ``prompting_from``: the checkpoint directory whose convention it keeps. ``discriminator``:
    the trained discriminator (saved with ``processor``). ``remove``: resumable states (or other in-progress
    directories) to delete, each with its ``.old`` twin. ``export_dtype``: the policy's dtype on disk
    (``resources.export_dtype``; None: as trained). ``env``: the run's DistEnv."""
    from prism_lab.trainers import distributed as dist_
    from prism_lab.trainers.checkpoint import full_state_dict, remove_resume_state, save_final

    saved = save_final(policy, processor, model_dir(out_dir), env, export_dtype) if policy is not None else None
    full_disc = full_state_dict(discriminator, env) if discriminator is not None and env.sharded else None
    if not env.is_main:
        dist_.finish(env)
        return {}
    if saved is not None and prompting is not None:
        prompting.write(saved)
    elif saved is not None and prompting_from is not None:
        Prompting.carry_over(prompting_from, saved)
    if discriminator is not None:
        from prism_lab.models.discriminator import save_discriminator

        save_discriminator(discriminator, processor, out_dir / DISC_SUBDIR, state_dict=full_disc)
    for directory in remove:
        remove_resume_state(directory)
    summary = write()
    dist_.finish(env)
    return summary
