"""`prism-lab doctor`: versions, threads, devices, optional extras, available stage kinds, and where the
installed versions differ from the lock (constraints/core.txt, or $PRISM_LAB_LOCK)."""

from __future__ import annotations

import os

from rich.markup import escape
from rich.table import Table

from prism_lab.cli.options import out
from prism_lab.errors import PrismError


def doctor() -> None:
    """Versions, torch threads, devices and which optional extras are installed."""
    from prism_lab.harness.provenance import git_commit, host_info, package_versions

    table = Table(title="prism-lab doctor")
    table.add_column("item")
    table.add_column("value")
    for k, v in host_info().items():
        table.add_row(k, v)
    table.add_row("git commit", git_commit() or "(not a git checkout)")
    for name, version in package_versions().items():
        table.add_row(name, version or "[dim]not installed[/dim]")
    try:
        import torch

        table.add_row("torch threads", str(torch.get_num_threads()))
        table.add_row("cuda available", str(torch.cuda.is_available()))
        if torch.cuda.is_available():
            table.add_row("cuda device", torch.cuda.get_device_name(0))
    except ImportError:
        table.add_row("torch", "[red]not importable[/red]")
    try:
        import torchvision  # noqa: F401

        table.add_row("torchvision", "[yellow]installed: it can break transformers' Qwen3-VL import on CPU torch[/yellow]")
    except Exception:  # noqa: BLE001
        table.add_row("torchvision", "not installed (good for the core environment)")
    from prism_lab.harness.stage_kinds import STAGE_KINDS

    for name in STAGE_KINDS.names():
        kind = STAGE_KINDS.get(name)
        table.add_row(f"stage {name}", "available" if kind.is_available() else "[yellow]not in this build[/yellow]")
    try:
        from prism_lab.eval.vlmeval.backend import find_vlmeval_python

        table.add_row("vlmevalkit backend", f"runs with {find_vlmeval_python()}")
    except PrismError as exc:
        table.add_row("vlmevalkit backend", f"[dim]not set up ({str(exc).splitlines()[0][:60]}...)[/dim]")
    try:
        from prism_lab.eval.lmms.backend import find_lmms_python

        table.add_row("lmms_eval backend", f"runs with {find_lmms_python()}")
    except PrismError as exc:
        table.add_row("lmms_eval backend", f"[dim]not set up ({str(exc).splitlines()[0][:60]}...)[/dim]")
    table.add_row("wandb mode", os.environ.get("PRISM_LAB_WANDB") or os.environ.get("WANDB_MODE") or "offline")
    table.add_row("hub kernels", f"USE_HUB_KERNELS={os.environ.get('USE_HUB_KERNELS', '')} "
                  "(prism-lab sets 0 unless you export another value)")
    out.print(table)
    print_lock_report()


def print_lock_report() -> None:
    """One line per package whose installed version differs from the lock, then a warning line (the exit
    code stays 0: doctor informs)."""
    from prism_lab.harness.installed import compare_with_lock

    report = compare_with_lock()
    extras = ",".join(report.extras) or "none"
    if report.problem:
        out.print(f"lock: {report.problem}", markup=False, highlight=False, soft_wrap=True)
        return
    if not report.differences:
        out.print(f"lock: installed versions match {report.path} (extras installed: {extras})", markup=False,
                  highlight=False, soft_wrap=True)
        return
    for diff in report.differences:
        out.print(f"  {diff.line()}", markup=False, highlight=False)
    target = f".[{','.join(report.extras)}]" if report.extras else "."
    advice = escape(f'pip install -c {report.path} -e "{target}"')
    out.print(f"[bold yellow]warning:[/bold yellow] {len(report.differences)} package(s) differ from the lock "
              f"{escape(str(report.path))} (extras installed: {extras}); to match it, reinstall with {advice}",
              highlight=False, soft_wrap=True)
