"""Options and helpers shared by every command group: the ledger root, output format, consoles."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


class Format(str, Enum):
    table = "table"
    json = "json"


class WandbMode(str, Enum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


RootOpt = Annotated[
    Optional[Path],
    typer.Option("--root", help="Directory holding ledger.sqlite and runs/ (default: $PRISM_LAB_ROOT or ./runs)."),
]
FormatOpt = Annotated[Format, typer.Option("--format", help="`table` for people, `json` (one document on stdout) for tools.")]
GridArg = Annotated[Path, typer.Argument(help="Grid file, e.g. experiments/toy.yaml.")]


def resolve_root(root: Path | None) -> Path:
    return Path(root or os.environ.get("PRISM_LAB_ROOT") or "runs")
