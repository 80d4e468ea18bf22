"""`--format json` prints exactly one JSON document on stdout (logs go to stderr), for every command that
has the option; a new command with `--format` must be added here."""

from __future__ import annotations

import json

import typer

from tests.conftest import run_cli

#: command path -> arguments that make it run cheaply (eval is covered in test_eval_cli.py)
COVERED = {("sweep", "plan"): ["experiments/smoke.yaml"], ("sweep", "status"): ["experiments/smoke.yaml"],
           ("eval",): None}


def _commands_with_format() -> set[tuple[str, ...]]:
    from prism_lab.cli import app

    cmd = typer.main.get_command(app)
    found: set[tuple[str, ...]] = set()

    def walk(c, path):
        subs = getattr(c, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, (*path, name))
        elif any("--format" in p.opts for p in c.params):
            found.add(path)

    walk(cmd, ())
    return found


def test_every_format_command_is_covered():
    assert _commands_with_format() == set(COVERED)


def test_json_output_is_one_document(tmp_path):
    for path, args in COVERED.items():
        if args is None:
            continue
        res = run_cli(*path, *args, "--root", str(tmp_path / "root"), "--format", "json")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)  # raises on anything but exactly one JSON document
        assert doc, path
