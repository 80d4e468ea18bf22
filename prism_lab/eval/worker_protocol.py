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
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["serve"]


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
