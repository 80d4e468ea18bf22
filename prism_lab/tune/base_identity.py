"""A study's identity covers its base grid: its trials were scored on that grid, and best.yaml extends it.

The resolved base grid's fingerprint (``SearchSpace.base_fingerprint``) is stored in the study's user
attrs when the study starts; resuming the study after the base grid changed is refused with one line.
A study started before the fingerprint was recorded takes the current one.
"""

from __future__ import annotations

from typing import Any

from prism_lab.errors import ConfigError
from prism_lab.tune.space import SearchSpace

BASE_ATTR = "prism_lab:base_grid"  # study user attr: {"fingerprint", "file"}


def check_base_grid(study: Any, space: SearchSpace, study_name: str, where: str) -> None:
    """Record the base grid's fingerprint in a new study; ConfigError when a resumed study's differs."""
    fp = space.base_fingerprint()
    info = study.user_attrs.get(BASE_ATTR)
    if info is None:
        study.set_user_attr(BASE_ATTR, {"fingerprint": fp, "file": str(space.base.path)})
        return
    if info.get("fingerprint") != fp:
        raise ConfigError(
            f"{space.base.path}: the base grid changed since study {study_name!r} in {where} was started "
            f"(from {info.get('file')}); its trials were scored on the old grid: restore that grid, or start a "
            "new study with another --study name or --storage")
