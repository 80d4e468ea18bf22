"""Checks of a `kind: lmeval` benchmark's task reference that load no model and no dataset.

`sweep plan` and `prism-lab eval` call :func:`check_task_reference` so that a benchmark naming a task lm-eval
does not have, or a task YAML that is missing or malformed, is refused before anything runs, not after
training. A task name is looked up in lm-eval's own task directory without building lm-eval's full index
(about 15,000 YAML files, ~16 s on 2 cores): only the files whose text holds the name as a whole word are
parsed, with lm-eval's own YAML loader and indexer; a name that no file holds is not a task. When the
files that hold it do not register it (a name defined through an include), the full index decides.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

import yaml

from prism_lab.errors import ConfigError

__all__ = ["check_task_reference", "lmeval_task_known", "require_lmeval"]


def require_lmeval(spec: Any) -> None:
    """ConfigError (one line) when lm-eval is not installed: every `kind: lmeval` benchmark needs it."""
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(f"benchmark {spec.name!r} (kind: lmeval) needs lm-eval, which is not installed: "
                          f"pip install -e '.[lmeval]'")


def _tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    assert spec is not None and spec.submodule_search_locations
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


@functools.lru_cache(maxsize=1)
def _task_files() -> tuple[Path, ...]:
    """Every file of lm-eval's task directory that can hold a task config (YAMLs and YAML templates)."""
    return tuple(sorted(p for p in _tasks_dir().rglob("*") if "yaml" in p.name and p.is_file()))


def _registered_in(files: list[Path], name: str) -> bool:
    """Whether lm-eval's indexer registers ``name`` (a task, group or tag) from any of ``files``."""
    from lm_eval.tasks._index import TaskIndex
    from lm_eval.tasks._yaml_loader import load_yaml

    entries: dict[str, Any] = {}
    for path in files:
        if path.suffix != ".yaml":
            continue
        try:
            TaskIndex.process_cfg(load_yaml(path, resolve_func=False, recursive=True), path, entries)
        except Exception:  # noqa: BLE001 - lm-eval's own index skips a file it cannot parse the same way
            continue
    return name in entries


@functools.lru_cache(maxsize=64)
def lmeval_task_known(name: str) -> bool:
    """Whether ``name`` is a task, group or tag of the installed lm-eval."""
    word = re.compile(rb"(?<![\w.-])" + re.escape(name.encode()) + rb"(?![\w.-])")
    holders = [p for p in _task_files() if word.search(p.read_bytes())]
    if not holders:
        return False
    try:
        if _registered_in(holders, name):
            return True
    except ImportError:  # another lm-eval layout: its public index decides
        pass
    from prism_lab.eval.lmeval import _task_manager

    return name in _task_manager(True).all_tasks


def _check_task_yaml(spec: Any, path: Path) -> None:
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_IgnoreTags)  # noqa: S506 - tags are dropped
    except yaml.YAMLError as e:
        raise ConfigError(f"benchmark {spec.name!r}: task YAML {path}: invalid YAML "
                          f"({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not cfg.get("task"):
        raise ConfigError(f"benchmark {spec.name!r}: task YAML {path}: expected an lm-eval task mapping with a "
                          f"'task' field")


class _IgnoreTags(yaml.SafeLoader):
    """A safe loader that reads lm-eval's ``!function`` tags as plain strings (nothing is imported)."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


def check_task_reference(spec: Any) -> None:
    """ConfigError naming the benchmark and its ``lmeval_task`` when lm-eval is not installed, when a task YAML
    is missing or malformed, or when lm-eval has no task of that name. No dataset is touched."""
    require_lmeval(spec)
    from prism_lab.eval.lmeval import _yaml_path

    path = _yaml_path(spec)  # ConfigError when a task YAML is named but absent
    if path is not None:
        _check_task_yaml(spec, path)
        return
    if not lmeval_task_known(str(spec.lmeval_task)):
        raise ConfigError(f"benchmark {spec.name!r}: field 'lmeval_task': lm-eval has no task, group or tag "
                          f"{spec.lmeval_task!r}")
