"""Small files with one job (issue 30's acceptance), read from the source:

* no module of prism_lab/ over 450 lines;
* no function over 100 lines unless a ``# long: <why>`` comment stands directly above it (or its decorators) or in
  the first lines of its body (the convention of docs/architecture.md);
* distributed start-up, checkpoint save/load and gradient clipping each live in exactly one module of
  prism_lab/trainers/ (calls and imports are read from the syntax tree, so a docstring naming them does not count).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "prism_lab"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 100
#: A function over MAX_FUNCTION_LINES needs a comment with this marker within these lines above/below its start.
LONG_MARKER = "long:"
MARKER_WINDOW = 3

#: concern -> the names (bare, or dotted as ``module.attr``) whose use makes a module own that concern.
ONE_MODULE_EACH = {
    "distributed start-up": {"init_process_group"},
    "checkpoint save/load": {"save_file", "load_file", "get_model_state_dict", "set_model_state_dict",
                             "get_state_dict", "set_state_dict", "get_optimizer_state_dict",
                             "set_optimizer_state_dict", "dcp.save", "dcp.load", "torch.save", "torch.load",
                             "save_pretrained"},
    "gradient clipping": {"clip_grad_norm_", "clip_grad_value_"},
}


def _modules(root: Path = PKG) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root.parent))


def oversized_modules(root: Path = PKG) -> list[str]:
    return [f"{_rel(p, root)}: {n} lines" for p in _modules(root)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]


def _has_long_marker(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A ``# long:`` comment in the MARKER_WINDOW lines above the function (its decorators included), or between
    its ``def`` and the MARKER_WINDOW-th line after its docstring."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    body = node.body
    has_doc = body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    after = (body[0].end_lineno if has_doc else node.lineno) + MARKER_WINDOW
    window = lines[max(0, first - 1 - MARKER_WINDOW):first - 1] + lines[node.lineno - 1:after]
    return any(ln.strip().startswith("#") and LONG_MARKER in ln for ln in window)


def unexplained_long_functions(root: Path = PKG) -> list[str]:
    out = []
    for path in _modules(root):
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not _has_long_marker(lines, node):
                    out.append(f"{_rel(path, root)}:{node.lineno} {node.name}: {length} lines")
    return out


def used_names(path: Path) -> set[str]:
    """Bare names, ``name.attr`` pairs and imported names a module uses (not its strings or comments)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
            if isinstance(node.value, ast.Name):
                names.add(f"{node.value.id}.{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(a.name.rsplit(".", 1)[-1] for a in node.names)
    return names


def owners(root: Path = PKG / "trainers") -> dict[str, list[str]]:
    """concern -> the trainers modules that use any of its names."""
    uses = {p: used_names(p) for p in _modules(root)}
    return {concern: sorted(p.name for p, names in uses.items() if names & marks)
            for concern, marks in ONE_MODULE_EACH.items()}


def test_no_module_is_over_450_lines():
    assert oversized_modules() == []


def test_no_function_is_over_100_lines_without_saying_why():
    assert unexplained_long_functions() == []


@pytest.mark.parametrize("concern", sorted(ONE_MODULE_EACH))
def test_each_run_concern_lives_in_one_trainers_module(concern):
    found = owners()[concern]
    assert len(found) == 1, f"{concern} is in {found or 'no module'} of prism_lab/trainers/ (expected exactly one)"


def test_the_checks_see_a_planted_violation(tmp_path):
    """The rules bite: a long function without the marker, a second clipping module, a module over the limit."""
    long_body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    (tmp_path / "a.py").write_text(f"def f():\n{long_body}\n")
    (tmp_path / "b.py").write_text(f"# long: one table, split would scatter it\ndef g():\n{long_body}\n")
    (tmp_path / "c.py").write_text("import torch\n\n\ndef clip(p):\n    torch.nn.utils.clip_grad_norm_(p, 1.0)\n")
    (tmp_path / "d.py").write_text('"""clip_grad_norm_ named in a docstring only."""\n' + "\n" * MAX_MODULE_LINES)
    (tmp_path / "e.py").write_text("from torch.nn.utils import clip_grad_norm_\n")
    assert [s.split(":")[0] for s in unexplained_long_functions(tmp_path)] == [f"{tmp_path.name}/a.py"]
    assert owners(tmp_path)["gradient clipping"] == ["c.py", "e.py"]
    assert [s.split(":")[0] for s in oversized_modules(tmp_path)] == [f"{tmp_path.name}/d.py"]
