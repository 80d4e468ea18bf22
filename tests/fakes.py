"""Shared test doubles and fixtures data (tests only)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism_lab.harness.context import InputArtifact
from prism_lab.prompts import SYSTEM_PROMPT, format_response


@dataclass
class FakeCtx:
    """The part of StageContext a stage runner uses, recording metrics in memory."""

    config: Any
    inputs: dict[str, InputArtifact]
    out_dir: Path
    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("test"))

    def input(self, role: str) -> InputArtifact:
        return self.inputs[role]

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        self.metrics.append((step, dict(values)))

    def heartbeat(self) -> None:
        pass


def counting_corpus(n: int = 100) -> list[str]:
    """A small task corpus for training a test tokenizer (counting + addition, paper format), ``n`` items."""
    out = [SYSTEM_PROMPT]
    for i in range(n):
        out.append(f"how many red circles are there ? add {i % 10} .")
        out.append(format_response(f"- {i % 6} red circles", f"{i % 6} plus {i % 10}", str(i % 16)))
    return out


def fake_nvidia_smi(bin_dir: Path, gpus: dict[str, int]) -> str:
    """Write an ``nvidia-smi`` into ``bin_dir`` that lists ``gpus`` (id -> MiB) as the real one answers
    ``--query-gpu=index,memory.total --format=csv,noheader,nounits``; returns a PATH with it first.
    For CPU machines that must see GPU ids (the stage processes of these tests never touch CUDA)."""
    import os

    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "nvidia-smi"
    lines = "".join(f"{i}, {mib}\\n" for i, mib in gpus.items())
    exe.write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    exe.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
