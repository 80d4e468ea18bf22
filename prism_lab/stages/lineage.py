"""Where a checkpoint came from: the checkpoint its chain starts from, and the chain's discriminator.

The single definition of "the base" for the drift measurements (``stages/drift.py``): walk the ledger
from a run up through its ``checkpoint`` / ``policy`` inputs to the first checkpoint-producing run of
the chain; the base is what that run started from:

- the run's own ``model/`` when it is a `base` run (it *produces* the chain's starting checkpoint; SFT
  takes it as its ``policy`` input);
- ``<artifact>/base`` when the run saved its starting point there (the SFT stage does for a tiny preset
  it builds at random init without a `base` stage: nothing else holds that model);
- else the model its config names (``model``: a hub id or a local checkpoint, as SFT fine-tunes it).

The discriminator is the nearest one up the same walk (an align run's ``discriminator/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism_lab.stages.artifacts import BASE_SUBDIR, DISC_SUBDIR, MODEL_SUBDIR, model_dir

__all__ = ["Origin", "chain_discriminator", "chain_start"]

#: Inputs that carry the policy checkpoint down a chain, in the order they are followed.
_UPSTREAM = ("checkpoint", "policy")


@dataclass(frozen=True)
class Origin:
    """A checkpoint of a chain: its directory and a stable identity (for caches)."""

    path: Path
    identity: str


def _upstream(ledger: Any, key: str) -> list[Any]:
    """The runs from ``key`` up to the top of its policy chain (``key``'s own run first)."""
    chain, seen = [], set()
    run = ledger.get_run(key)
    while run is not None and run.key not in seen:
        seen.add(run.key)
        chain.append(run)
        nxt = next((run.inputs[r] for r in _UPSTREAM if r in run.inputs), None)
        run = ledger.get_run(nxt) if nxt else None
    return chain


def chain_start(ledger: Any, key: str) -> Origin | None:
    """The checkpoint the chain of run ``key`` starts from (see the module doc); None when unknown
    (a checkpoint evaluated outside any chain, or a base that is no longer available offline)."""
    chain = _upstream(ledger, key)
    producers = [r for r in chain if r.kind not in ("eval", "checkpoint")]
    if not producers:
        return None
    top = producers[-1]
    art = Path(top.artifact_path) if top.artifact_path else None
    if top.kind == "base":
        if art is not None and (model_dir(art) / "config.json").is_file():
            return Origin(model_dir(art), f"{top.key}:{MODEL_SUBDIR}")
        return None
    if art is not None and (art / BASE_SUBDIR / "config.json").is_file():
        return Origin(art / BASE_SUBDIR, f"{top.key}:{BASE_SUBDIR}")
    model = top.config.get("model") if isinstance(top.config, dict) else None
    if model:
        from prism_lab.errors import CheckpointError
        from prism_lab.models import resolve_checkpoint_dir

        try:
            return Origin(resolve_checkpoint_dir(str(model)), f"model:{model}")
        except CheckpointError:
            return None
    return None


def chain_discriminator(ledger: Any, key: str) -> Path | None:
    """The nearest discriminator directory up the chain of run ``key`` (None when the chain has none)."""
    for run in _upstream(ledger, key):
        if run.artifact_path and (Path(run.artifact_path) / DISC_SUBDIR / "discriminator.json").is_file():
            return Path(run.artifact_path) / DISC_SUBDIR
    return None
