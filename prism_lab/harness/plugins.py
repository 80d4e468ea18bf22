"""Extension modules named in ``PRISM_LAB_PLUGINS`` (comma-separated) are imported before planning
and inside every stage subprocess; they may register stage kinds, pipelines or algorithm presets."""

from __future__ import annotations

import importlib
import os

from prism_lab.errors import ConfigError

_loaded: set[str] = set()


def load_plugins() -> list[str]:
    names = [n.strip() for n in os.environ.get("PRISM_LAB_PLUGINS", "").split(",") if n.strip()]
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"PRISM_LAB_PLUGINS: cannot import plugin module {name!r} ({exc})") from None
        _loaded.add(name)
    return names
