"""The package's folders are its architecture: imports point one way, and the light floors stay light.

Every ``import`` / ``from ... import`` in prism_lab/ (function-level ones included; ``if TYPE_CHECKING:``
blocks excluded) is read from the source. A module may import its own package, the ground floor, and
the packages below its own in ``FLOORS``. ``algos`` and ``rewards`` import only the ground floor, and
``harness`` never imports torch, stages or trainers (runners are ``module:attr`` strings).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "prism_lab"

GROUND = {"errors", "registry", "prompts", "seeds", "__init__"}

#: Top to bottom; a package may import any package listed after it (and the ground floor).
FLOORS: list[set[str]] = [
    {"cli"},
    {"report", "tune"},
    {"harness"},
    {"stages"},
    {"trainers", "eval"},
    {"rollout"},
    {"models"},
    {"data"},
    {"config"},
    {"algos", "rewards"},
]

#: Packages that may import nothing of prism_lab but the ground floor (pure functions).
LEAVES = {"algos", "rewards"}

#: Third-party modules a floor must never import (not even inside a function).
FORBIDDEN_THIRD_PARTY = {"harness": {"torch", "transformers"}, "config": {"torch", "transformers"}}

#: Downward imports the floors allow but these packages must still not make.
FORBIDDEN_PACKAGES = {"harness": {"stages", "trainers", "rollout", "algos"}, "report": {"trainers", "stages", "rollout"}}


def floor_of(package: str) -> int:
    for i, names in enumerate(FLOORS):
        if package in names:
            return i
    raise AssertionError(f"package prism_lab.{package} is on no floor: add it to FLOORS in {__file__}")


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports_of(path: Path, pkg_root: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_lines(tree)
    parts = list(path.relative_to(pkg_root.parent).with_suffix("").parts)
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[: len(parts) - node.level] if path.name != "__init__.py" else parts[: len(parts) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            if mod == "prism_lab":  # `from prism_lab import rollout`
                out += [(node.lineno, f"prism_lab.{a.name}") for a in node.names]
    return out


def package_of(rel: Path) -> str:
    """prism_lab/<package>/... -> package; a ground-floor module -> its stem."""
    return rel.parts[1] if len(rel.parts) > 2 else rel.stem


def violations(pkg_root: Path) -> list[str]:
    found = []
    for path in sorted(pkg_root.rglob("*.py")):
        rel = path.relative_to(pkg_root.parent)
        src_pkg = package_of(rel)
        for line, mod in imports_of(path, pkg_root):
            where = f"{rel}:{line}: imports {mod}"
            top = mod.split(".")[0]
            if src_pkg in FORBIDDEN_THIRD_PARTY and top in FORBIDDEN_THIRD_PARTY[src_pkg]:
                found.append(f"{where} ({src_pkg} must not import {top})")
            if top != "prism_lab" or mod == "prism_lab":
                continue
            dst = mod.split(".")[1]
            if dst in GROUND or dst == src_pkg:
                continue
            if src_pkg in GROUND:
                found.append(f"{where} (the ground floor imports only the ground floor)")
            elif src_pkg in LEAVES:
                found.append(f"{where} ({src_pkg} imports only torch and the ground floor)")
            elif dst in FORBIDDEN_PACKAGES.get(src_pkg, set()):
                found.append(f"{where} ({src_pkg} must not import {dst})")
            elif floor_of(dst) <= floor_of(src_pkg):
                found.append(f"{where} (against the direction: {src_pkg} is not above {dst})")
    return found


def test_imports_point_one_way():
    assert violations(PKG) == []


def test_a_planted_back_edge_is_caught(tmp_path):
    """Copy the package, plant a trainer importing the harness, and the check must name it."""
    import shutil

    copy = tmp_path / "prism_lab"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = copy / "trainers" / "planted.py"
    planted.write_text("def f():\n    from prism_lab.harness.ledger import Ledger\n    return Ledger\n")
    (copy / "algos" / "planted.py").write_text("import prism_lab.models\n")
    found = violations(copy)
    assert any("trainers/planted.py:2: imports prism_lab.harness.ledger" in v for v in found), found
    assert any("algos/planted.py:1: imports prism_lab.models" in v for v in found), found
    assert len(found) == 2


@pytest.mark.parametrize("code", [
    "from prism_lab.harness.planning import build_plan, load_grid; build_plan(load_grid('experiments/toy.yaml'))",
    "import prism_lab.cli",
    "import prism_lab.report",
])
def test_planning_and_the_cli_import_no_torch_pandas_or_pil(code):
    probe = (f"import sys; {code}; "
             "heavy = sorted(m for m in ('torch', 'transformers', 'pandas', 'PIL') if m in sys.modules); "
             "print(','.join(heavy))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=PKG.parent, timeout=120)
    assert res.returncode == 0, res.stderr
    heavy = res.stdout.strip()
    if code == "import prism_lab.report":
        heavy = ",".join(m for m in heavy.split(",") if m and m != "pandas")  # the report is built on pandas
    assert heavy == "", f"{code!r} imported {heavy}"


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                    names.add(sub.name)
                elif isinstance(sub, (ast.Import, ast.ImportFrom)):
                    names.update((a.asname or a.name).split(".")[0] for a in sub.names)
    if "__getattr__" in names:  # lazy exports (PEP 562): the string keys of the module's top-level dicts
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                names.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
    return names


def unresolved_imports(pkg_root: Path, extra_roots: tuple[Path, ...] = ()) -> list[str]:
    """``from prism_lab.x import name`` statements (function-level ones too) whose module or name does not
    exist: a lazy import inside a function only fails when that code path runs, so check them all here."""
    found = []
    for path in sorted([*pkg_root.rglob("*.py"), *(p for r in extra_roots for p in r.rglob("*.py"))]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("prism_lab")):
                continue
            rel = Path(*node.module.split(".")[1:])
            target = pkg_root / rel
            src = target / "__init__.py" if target.is_dir() else target.with_suffix(".py")
            if not src.is_file():
                found.append(f"{path}:{node.lineno}: no module {node.module}")
                continue
            defined = _top_level_names(src)
            for alias in node.names:
                sub = target / alias.name
                if alias.name != "*" and alias.name not in defined and not (sub.is_dir() or sub.with_suffix(".py").is_file()):
                    found.append(f"{path}:{node.lineno}: {node.module} has no {alias.name}")
    return found


def test_every_prism_lab_import_names_something_that_exists():
    tests_dir = PKG.parent / "tests"
    assert unresolved_imports(PKG, (tests_dir, PKG.parent / "benchmarks")) == []


def test_a_stale_lazy_import_is_caught(tmp_path):
    import shutil

    copy = tmp_path / "prism_lab"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "trainers" / "planted.py").write_text("def f():\n    from prism_lab.trainers.disc_warmup import nothing_here\n")
    found = unresolved_imports(copy)
    assert len(found) == 1 and "prism_lab.trainers.disc_warmup has no nothing_here" in found[0]
