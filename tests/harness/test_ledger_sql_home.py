"""SQL on the ledger is written in one module: harness/ledger.py. Other modules call its methods and never
reach for its connection (``ledger.conn``); harness/fingerprint.py keeps a digest cache of its own."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_import_direction import PKG

#: Modules that own an SQLite connection: the ledger, and the file-digest cache (not the ledger).
OWNERS = {"harness/ledger.py", "harness/fingerprint.py"}


def conn_uses(pkg_root: Path) -> list[str]:
    found = []
    for path in sorted(pkg_root.rglob("*.py")):
        rel = path.relative_to(pkg_root).as_posix()
        if rel in OWNERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "conn":
                found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_ledger_module_touches_the_ledger_connection():
    assert conn_uses(PKG) == []
