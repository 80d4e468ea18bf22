"""The command-line error convention shared by every entry point.

Bad input is one line on stderr and exit code 2, never a traceback:
- a PrismError (bad grid, dataset, checkpoint, ledger; its message names the file and the field);
- a usage error (unknown command or option, a value of the wrong type or out of range). typer 0.29
  bundles its own copy of click, whose exceptions derive from ``typer.TyperException``; an installed
  ``click`` package may be a different copy, so both are recognised;
- an OSError that names a file (a directory that cannot be created, a disk that is full).
Ctrl-C is 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any

USAGE_EXIT = 2


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(ClickException-like, Exit-like, Abort-like) classes of typer's bundled click and of ``click``."""
    import typer

    errors: list[type] = [typer.TyperException]
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    try:
        import click
    except ImportError:
        pass
    else:
        errors.append(click.exceptions.ClickException)
        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
    return tuple(errors), tuple(exits), tuple(aborts)


def describe(exc: BaseException) -> str | None:
    """The one-line message for a user-facing error, or None when ``exc`` is not one."""
    from prism_lab.errors import PrismError

    if isinstance(exc, PrismError):
        return one_line(str(exc))
    errors, _, _ = _click_classes()
    if isinstance(exc, errors):
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return one_line(f"usage: {message} (see --help)")
    if isinstance(exc, OSError) and exc.filename is not None:
        return one_line(f"{exc.filename}: {exc.strerror or exc}")
    return None


def run_app(app: Any, argv: list[str] | None = None) -> int:
    _, exits, aborts = _click_classes()
    try:
        result = app(args=argv, standalone_mode=False)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted below
        if isinstance(exc, exits):
            return int(getattr(exc, "exit_code", 0) or 0)
        if isinstance(exc, aborts):
            print("aborted", file=sys.stderr)
            return 130
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help was printed already
            return USAGE_EXIT
        message = describe(exc)
        if message is None:
            raise
        print(f"prism-lab: error: {message}", file=sys.stderr)
        return USAGE_EXIT
    return result if isinstance(result, int) else 0
