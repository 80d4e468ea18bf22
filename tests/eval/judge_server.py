"""A stand-in for a served judge model (tests only): an OpenAI-compatible `/v1/models` and `/v1/chat/completions`
on 127.0.0.1, in a thread, answering by a fixed rule so the tests check prism-lab's client, not a model.

The rule: take the `<answer>` content of the "Model response" part of the prompt, spell-out numbers become digits
("seven" -> "7"), and reply "1" when it equals the "Ground-truth answer" part, else "0"."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WORDS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def rule_verdict(prompt: str) -> str:
    gt = prompt.split("Ground-truth answer:\n", 1)[1].split("\n\nModel response:", 1)[0].strip()
    response = prompt.split("Model response:\n", 1)[1].split("\n\nReply with", 1)[0]
    m = re.search(r"<answer>(.*?)</answer>", response, re.S)
    answer = (m.group(1) if m else response).strip().lower()
    return "1" if WORDS.get(answer, answer) == gt.lower() else "0"


class StandInJudge:
    """``with StandInJudge(models=[...]) as judge: judge.url`` -> ``http://127.0.0.1:<port>/v1``. ``chat_status``:
    an HTTP status every chat request gets instead of a verdict (``fail_first``: only the first N requests)."""

    def __init__(self, models: tuple[str, ...] = ("stand-in-judge",), chat_status: int | None = None,
                 fail_first: int | None = None) -> None:
        self.models = models
        self.chat_status = chat_status
        self.fail_first = fail_first
        self.chats: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return self._send(404, {"error": "not found"})
                self._send(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 1, "owned_by": "stand-in", "root": f"stand-in/{m}-weights"}
                    for m in owner.models]})

            def do_POST(self) -> None:
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.chats.append(req)
                failing = owner.chat_status is not None and (owner.fail_first is None
                                                             or len(owner.chats) <= owner.fail_first)
                if self.path != "/v1/chat/completions" or failing:
                    return self._send(owner.chat_status or 404, {"error": "stand-in failure"})
                verdict = rule_verdict(req["messages"][-1]["content"])
                self._send(200, {"id": "x", "object": "chat.completion", "model": req["model"],
                                 "system_fingerprint": "fp-stand-in",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": verdict},
                                              "finish_reason": "stop"}]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def __enter__(self) -> "StandInJudge":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
