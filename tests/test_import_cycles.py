"""No import circle among prism_lab's modules: module-level imports and the lazy ones inside functions
(read from the source, as tests/test_import_direction.py reads them; ``if TYPE_CHECKING:`` blocks excluded).

An edge goes to the module an import names: ``from prism_lab.a import b`` goes to ``prism_lab.a.b`` when
``b`` is a module, else to ``prism_lab.a``. Importing a submodule also runs its packages' ``__init__``; those
implied edges are left out (a package's ``__init__`` re-exporting its own modules is not a circle of design).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from tests.test_import_direction import PKG, _type_checking_lines


def module_name(path: Path, pkg_root: Path) -> str:
    parts = list(path.relative_to(pkg_root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(name: str, pkg_root: Path) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    target = pkg_root / rel
    return (target / "__init__.py").is_file() or target.with_suffix(".py").is_file()


def import_graph(pkg_root: Path) -> dict[str, set[str]]:
    """module -> the prism_lab modules it imports (anywhere in its source)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(pkg_root.rglob("*.py")):
        me = module_name(path, pkg_root)
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_lines(tree)
        is_pkg = path.name == "__init__.py"
        out: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith(pkg_root.name + "."))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = me.split(".") if is_pkg else me.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if not mod.startswith(pkg_root.name):
                    continue
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    out.add(sub if _exists(sub, pkg_root) else mod)
        out.discard(me)
        graph[me] = {m for m in out if _exists(m, pkg_root)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert cycles(import_graph(PKG)) == []


def test_a_planted_lazy_circle_is_caught(tmp_path):
    copy = tmp_path / "prism_lab"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "algos" / "planted_a.py").write_text("from prism_lab.algos import planted_b\n")
    (copy / "algos" / "planted_b.py").write_text("def f():\n    from prism_lab.algos.planted_a import g\n")
    assert cycles(import_graph(copy)) == [["prism_lab.algos.planted_a", "prism_lab.algos.planted_b"]]
