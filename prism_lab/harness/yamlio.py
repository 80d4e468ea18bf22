"""YAML loading that remembers where every value came from, so errors can name file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from prism_lab.errors import ConfigError

#: Maps a field path (tuple of keys / list indices) to (file, 1-based line).
LineMap = dict[tuple, tuple[str, int]]


#: Most values one YAML file may expand to. Aliases (``*name``) re-use a node, so a few lines of nested
#: aliases can stand for billions of values (the "billion laughs"); a grid has at most thousands.
MAX_YAML_VALUES = 100_000


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: tuple, lines: LineMap, fname: str,
               budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"{fname}:{node.start_mark.line + 1}: {'.'.join(map(str, path)) or '(top level)'}: the "
                          f"file expands to more than {MAX_YAML_VALUES:,} values (nested aliases?)")
    lines[path] = (fname, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ConfigError(f"{fname}:{key_node.start_mark.line + 1}: mapping keys must be scalars")
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                raise ConfigError(f"{fname}:{key_node.start_mark.line + 1}: mapping keys must be scalars")
            if key in out:
                dotted = ".".join(str(p) for p in path + (key,))
                raise ConfigError(
                    f"{fname}:{key_node.start_mark.line + 1}: {dotted}: duplicate key {key!r} "
                    f"(first defined on line {lines[path + (key,)][1]})"
                )
            lines[path + (key,)] = (fname, key_node.start_mark.line + 1)
            out[key] = _construct(loader, value_node, path + (key,), lines, fname, budget)
            # keep the key's line: it is where a reader looks for the field
            lines[path + (key,)] = (fname, key_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, child, path + (i,), lines, fname, budget) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> tuple[Any, LineMap]:
    """Parse one YAML file. Returns the data and a map from field path to (file, line).

    Raises ConfigError (one line, with file and line) for unreadable files, YAML syntax errors,
    duplicate keys and non-scalar keys.
    """
    path = Path(path)
    fname = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{fname}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{fname}: cannot read file ({exc})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: LineMap = {}
        data = {} if node is None else _construct(loader, node, (), lines, fname, [MAX_YAML_VALUES])
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise ConfigError(f"{fname}:{line}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{fname}: invalid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        loader.dispose()
    return data, lines


def locate(lines: LineMap, path: tuple, default_file: str) -> str:
    """``file:line`` of the longest prefix of ``path`` that has a known location."""
    for n in range(len(path), -1, -1):
        hit = lines.get(tuple(path[:n]))
        if hit is not None:
            return f"{hit[0]}:{hit[1]}"
    return default_file


def dotted(path: tuple) -> str:
    """``('axes', 'size', 1)`` -> ``axes.size[1]``."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or "(top level)"
