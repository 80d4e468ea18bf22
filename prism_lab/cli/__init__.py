"""The `prism-lab` command line: one module per command group. Every user-facing error is one line on
stderr and exit code 2 (see errors.py)."""

from __future__ import annotations

import typer

from prism_lab.cli.data import data_app
from prism_lab.cli.doctor import doctor
from prism_lab.cli.eval import eval_command
from prism_lab.cli.report import report
from prism_lab.cli.sweep import sweep_app
from prism_lab.cli.tune import tune

app = typer.Typer(
    help="prism-lab: declare a grid (size x algorithm x alignment x seed), run every PRISM stage, "
    "evaluate, tune and report.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
app.add_typer(sweep_app, name="sweep")
app.add_typer(data_app, name="data")
app.command("eval")(eval_command)
app.command("report")(report)
app.command("tune")(tune)
app.command("doctor")(doctor)


def main(argv: list[str] | None = None) -> int:
    from prism_lab.cli.errors import run_app

    return run_app(app, argv)
