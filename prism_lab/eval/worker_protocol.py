"""The JSON-line loop of an external backend's worker (VLMEvalKit, lmms-eval): one protocol, two kits.

The worker runs in the backend's own virtualenv. It answers ``{"ready": ...}`` once the kit imports, then one
reply per request line (``{"ok": true, ...}`` or ``{"ok": false, "type", "message"}``) until ``{"op": "exit"}``
or end of input. The protocol stream is a duplicate of stdout taken first; stdout itself then goes to stderr,
so nothing a kit prints can corrupt the protocol.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["cached_model", "decode_request", "serve"]


def serve(import_kit: Callable[[], Any], run_request: Callable[[dict], dict], models: Iterable[Any]) -> int:
    """Serve requests on stdin with ``run_request``; ``models`` (the worker's model cache) are closed at exit."""
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)  # the kit's prints go to the log (stderr), never into the protocol stream
    try:
        import_kit()
        proto.write(json.dumps({"ready": True}) + "\n")
    except Exception as e:  # noqa: BLE001
        proto.write(json.dumps({"ready": False, "type": type(e).__name__, "message": str(e)}) + "\n")
        return 1
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        if req.get("op") == "exit":
            break
        try:
            reply = {"ok": True, **run_request(req)}
        except Exception as e:  # noqa: BLE001 - reported to the parent, which re-raises
            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "type": type(e).__name__, "message": str(e)}
        proto.write(json.dumps(reply, default=str) + "\n")
    for m in models:
        m.close()
    return 0


def decode_request(req: Mapping[str, Any]) -> tuple[Any, Any, Any, Path]:
    """A benchmark request's parts, as both workers read them: (benchmark spec, generation settings,
    prompting convention, work directory)."""
    from prism_lab.eval.backends import GenerationSettings
    from prism_lab.eval.benchmarks import BenchmarkSpec
    from prism_lab.prompts import Prompting

    return (BenchmarkSpec.model_validate(req["spec"]), GenerationSettings(**req["settings"]),
            Prompting(**req.get("prompting", {})), Path(req["work_dir"]))


def cached_model(cache: dict[str, Any], req: Mapping[str, Any], model_class: Callable[..., Any], settings: Any,
                 prompting: Any) -> Any:
    """The worker's model for ``req``'s checkpoint and engine: the cached one when they match, else a new
    ``model_class`` (the previous one closed first: one model in memory at a time)."""
    key = json.dumps([req["checkpoint_dir"], req.get("engine_kind", "auto"), req.get("batch_size", 16),
                      req.get("threads")])
    model = cache.get(key)
    if model is None:
        for old in cache.values():
            old.close()
        cache.clear()
        model = model_class(req["checkpoint_dir"], settings=settings, prompting=prompting,
                            batch_size=int(req.get("batch_size", 16)), engine_kind=req.get("engine_kind", "auto"),
                            threads=req.get("threads"))
        cache[key] = model
    return model
