"""Options and helpers shared by every command group: the ledger root, output format, consoles."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from prism_lab.errors import PrismError

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


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile (prints, logging, child processes) to stderr, so a
    command's stdout carries only its result (``--format json``: exactly one JSON document)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stdout (test runners): Python-level only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)


def resolve_root(root: Path | None) -> Path:
    """The ledger root: ``--root``, else $PRISM_LAB_ROOT, else ./runs. It may be absent (created when
    something is written) but never a file."""
    path = Path(root or os.environ.get("PRISM_LAB_ROOT") or "runs")
    if path.exists() and not path.is_dir():
        raise PrismError(f"--root {path}: expected a directory (for ledger.sqlite and runs/), found a file")
    return path


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


ExecutorOpt = Annotated[ExecutorName, typer.Option(
    "--executor", help="`local`: subprocesses on this machine; `ray`: a Ray cluster (needs the `ray` extra).")]
AddressOpt = Annotated[Optional[str], typer.Option(
    "--address", help="Ray: HOST:PORT of the head node (`ray start --head` prints it) or `auto`; default: "
    "$RAY_ADDRESS, else a Ray instance started for this command only.")]
SharedRootOpt = Annotated[Optional[Path], typer.Option(
    "--shared-root", help="Ray: where runs/ goes, a directory mounted at the same path on every node and here "
    "(default: --root). The ledger stays in --root: keep that on this machine's own disk.")]
WorkerRetriesOpt = Annotated[int, typer.Option(
    "--worker-retries", min=0, help="Ray: times a stage run is restarted after its Ray worker or node died.")]
