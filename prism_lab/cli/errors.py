"""The command-line error convention shared by every entry point: a PrismError is one line on stderr
and exit code 2; usage errors are click's; Ctrl-C is 130."""

from __future__ import annotations

import sys
from typing import Any


def run_app(app: Any, argv: list[str] | None = None) -> int:
    import click

    try:
        result = app(args=argv, standalone_mode=False)
    except Exception as exc:  # noqa: BLE001 - sorted below
        from prism_lab.errors import PrismError

        if isinstance(exc, PrismError):
            print(f"prism-lab: error: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            return 130
        raise
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0
