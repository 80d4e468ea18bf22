"""Create or load the Optuna study of a search space: its sampler, its pruner, and the check that a
resumed study still has the search space it was started with."""

from __future__ import annotations

import time
import warnings
from typing import Any

from prism_lab.errors import ConfigError
from prism_lab.tune.space import SearchSpace
from prism_lab.tune.storage import StorageRef, open_storage

SPACE_ATTR = "prism_lab:space"  # study user attr: fingerprint and file of the search space


def make_sampler(space: SearchSpace, seed: int | None) -> Any:
    import optuna

    kind = space.spec.sampler
    if kind == "auto":
        kind = "nsga2" if space.multi_objective else "tpe"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-argument warnings
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(space: SearchSpace) -> Any:
    import optuna

    p = space.spec.pruning
    if p is None or p.pruner == "none" or not p.report:
        return optuna.pruners.NopPruner()
    if p.pruner == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials)


def open_study(space: SearchSpace, ref: StorageRef, study_name: str, *, storage: Any = None) -> Any:
    """Create or load (load_if_exists) the study; refuse a study whose search space has changed."""
    import optuna

    storage = storage if storage is not None else open_storage(ref)
    existed = _study_exists(storage, study_name)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=space.directions,
                                    sampler=make_sampler(space, space.spec.seed), pruner=make_pruner(space),
                                    load_if_exists=True)
    except ValueError as exc:
        raise ConfigError(f"study {study_name!r} in {ref.url}: {exc}; use another --study name") from None
    if existed:
        _check_made_by_prism_lab(study, ref, study_name)
    existing = [d.name.lower() for d in study.directions]
    if existing != space.directions:
        raise ConfigError(f"study {study_name!r} in {ref.url} optimises {existing}, but {space.path} asks for "
                          f"{space.directions}; use another --study name")
    info = study.user_attrs.get(SPACE_ATTR)
    fp = space.fingerprint()
    if info is None:
        study.set_user_attr(SPACE_ATTR, {"fingerprint": fp, "file": str(space.path), "base": str(space.base.path),
                                         "cell": space.cell})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                study.set_metric_names([o.metric for o in space.objectives])
            except Exception:  # noqa: BLE001 - only cosmetics for optuna-dashboard
                pass
    elif info.get("fingerprint") != fp:
        raise ConfigError(
            f"{space.path}: the parameters, objectives or cell differ from those study {study_name!r} was started "
            f"with (from {info.get('file')}); a study's search space cannot change: use another --study name"
        )
    return study


def _study_exists(storage: Any, study_name: str) -> bool:
    try:
        storage.get_study_id_from_name(study_name)
    except KeyError:
        return False
    return True


def _check_made_by_prism_lab(study: Any, ref: StorageRef, study_name: str, *, wait_s: float = 10.0) -> None:
    """Refuse a study that prism-lab did not create (no search-space marker): its trials are not trials of a
    search space, and adopting it mixes them into best.yaml. On a remote RDB, where no file lock orders the
    tuners, a study without trials may be one another tuner created a moment ago: wait for its marker."""
    deadline = time.monotonic() + (wait_s if ref.kind == "rdb" else 0.0)
    while not _has_marker(study.user_attrs.get(SPACE_ATTR)):
        if time.monotonic() >= deadline or study.get_trials(deepcopy=False):
            raise ConfigError(
                f"study {study_name!r} in {ref.url} was not created by prism-lab tune (it has no {SPACE_ATTR!r} "
                "user attribute): its trials are not trials of this search space; pick another --study name "
                "(or another --storage)")
        time.sleep(0.5)


def _has_marker(info: Any) -> bool:
    return isinstance(info, dict) and isinstance(info.get("fingerprint"), str)
