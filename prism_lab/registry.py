"""A tiny named registry used for stage kinds, algorithms, advantage modes, benchmarks and presets,
``import_ref`` for the lazily imported ``module:attr`` references (stage runners, backends), and
``declared_names``: the names a module registers, read from its source without importing it, so
configs validate names against the registry itself while planning imports no torch."""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def import_ref(ref: str) -> Any:
    """Import ``package.module:attr``."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Maps names to objects; lookups of unknown names raise KeyError listing the known ones."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        if name in self._items and not replace:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@REG.register("grpo")``."""

        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise KeyError(f"unknown {self.what} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


# ------------------------------------------------------------------------ names read from the source
_REGISTERING_METHODS = ("register", "add")


def _string_arg(call: ast.Call, where: str) -> str:
    if call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str):
        return call.args[0].value
    raise ValueError(f"{where}: a registration must name its entry with a string literal, got "
                     f"{ast.unparse(call)}")


def _is_registration(call: ast.Call, registry: str, registrars: tuple[str, ...]) -> bool:
    func = call.func
    if isinstance(func, ast.Attribute):
        return (func.attr in _REGISTERING_METHODS and isinstance(func.value, ast.Name)
                and func.value.id == registry)
    return isinstance(func, ast.Name) and func.id in registrars


def _top_level_calls(tree: ast.Module) -> Iterator[ast.Call]:
    """Calls made when the module is imported: decorators of module-level functions and classes, and
    every call in any other module-level statement (loops and conditionals included)."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield from (d for d in node.decorator_list if isinstance(d, ast.Call))
        else:
            yield from (sub for sub in ast.walk(node) if isinstance(sub, ast.Call))


@functools.cache
def declared_names(module: str, registry: str, registrars: tuple[str, ...] = ()) -> frozenset[str]:
    """The names registered into ``module.registry`` when ``module`` is imported, read from its source.

    Recognised forms, at module level: ``@REGISTRY.register("name")`` decorators, ``REGISTRY.add("name",
    obj)`` and ``REGISTRY.register("name")(obj)`` calls, and calls of the helper functions named in
    ``registrars`` (``register_backend("name", ...)``). The module is found with
    :func:`importlib.util.find_spec` and parsed, never imported, so a config can validate its names
    without importing torch. A registration whose name is not a string literal raises ValueError:
    the names must be readable.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise ValueError(f"cannot find the source of module {module!r}")
    path = Path(spec.origin)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for call in _top_level_calls(tree):
        if _is_registration(call, registry, registrars):
            names.add(_string_arg(call, f"{path}:{call.lineno}"))
    if not names:
        raise ValueError(f"{path}: no registrations into {registry} found")
    return frozenset(names)


def known_names(module: str, registry: str, registrars: tuple[str, ...] = ()) -> list[str]:
    """:func:`declared_names`, plus whatever was registered at run time when ``module`` is already imported
    (plugins add entries that way)."""
    names = set(declared_names(module, registry, registrars))
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, registry, None), Registry):
        names.update(getattr(loaded, registry).names())
    return sorted(names)
