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


class RecordingEngine:
    """A test double for a colocated vLLM engine (vLLM is a GPU-only library): the small interface the trainers'
    colocated rollouts call (``load_weights``, ``generate``, ``sleep``, ``wake_up``), recording every call.

    It proves what prism-lab hands to an engine and in which order (prism_lab/rollout/colocate.py); it proves
    nothing about vLLM itself. ``load_weights`` keeps a CPU copy of each tensor it gets (``loads``: one list of
    ``(name, tensor)`` per call); ``generate`` answers with ``reply(prompts, **kwargs)`` (default: ``n`` rollouts per
    prompt of the tokens ``tokens``, without log-probs). ``inner``: a real colocated engine (the transformers copy of
    ``rollout_engine: hf_colocated``) that every call is passed on to after it is recorded."""

    kind = "vllm"

    def __init__(self, reply=None, tokens: tuple[int, ...] = (5, 6, 7), inner=None) -> None:
        self.events: list[tuple] = []
        self.loads: list[list[tuple[str, Any]]] = []
        self.reply = reply
        self.tokens = list(tokens)
        self.inner = inner
        if inner is not None:
            self.kind, self.suppress_token_ids = inner.kind, inner.suppress_token_ids

    def sleep(self, level: int = 1) -> None:
        self.events.append(("sleep", level))
        if self.inner is not None:
            self.inner.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.events.append(("wake_up", tuple(tags or ())))
        if self.inner is not None:
            self.inner.wake_up(tags=tags)

    def load_weights(self, weights) -> None:
        got = [(name, t.detach().to("cpu", copy=True)) for name, t in weights]
        self.loads.append(got)
        self.events.append(("load_weights", len(got)))
        if self.inner is not None:
            self.inner.load_weights(weights)

    def generate(self, prompts, **kwargs):
        from prism_lab.rollout import Rollout

        self.events.append(("generate", len(prompts)))
        if self.inner is not None:
            return self.inner.generate(prompts, **kwargs)
        if self.reply is not None:
            return self.reply(prompts, **kwargs)
        return [Rollout(prompt_index=i, token_ids=list(self.tokens), text="", logprobs=None, finish_reason="length")
                for i in range(len(prompts)) for _ in range(kwargs.get("n", 1))]

    def phases(self) -> list[str]:
        """The events as the phase names of prism_lab.rollout.colocate.PHASES (a run of loads is one ``sync``)."""
        names = {"sleep": "sleep", "generate": "generate", "load_weights": "sync"}
        out: list[str] = []
        for ev in self.events:
            name = names.get(ev[0]) or ("wake_weights" if ev[1] == ("weights",) else "wake_kv_cache")
            if not (name == "sync" and out and out[-1] == "sync"):
                out.append(name)
        return out
