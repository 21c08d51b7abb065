"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests (annotator, RL judge)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Endpoint:
    """POST /v1/chat/completions on 127.0.0.1. ``script``: statuses to answer before succeeding; ``replies``: a
    function of the request text giving the completion; requests after the first ``slow_after`` take 2 s each."""

    def __init__(self, script=(), replies=None, slow_after: int | None = None):
        self.script, self.replies, self.slow_after = list(script), replies or self.default_reply, slow_after
        self.requests: list[dict] = []
        self.answered: list[str] = []  # contents whose 200 response was fully written
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = Endpoint.content(body)
                with outer.lock:
                    outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                           "body": body, "content": content})
                    status = outer.script.pop(0) if outer.script else 200
                    slow = outer.slow_after is not None and len(outer.requests) > outer.slow_after
                if slow:
                    time.sleep(2)
                if status != 200:
                    self._send(status, {"error": "busy"}, {"Retry-After": "0"})
                    return
                parts = body["messages"][0]["content"]
                self._send(200, {"choices": [{"message": {"role": "assistant",
                                                          "content": outer.replies(parts[-1]["text"], parts)}}]})
                with outer.lock:
                    outer.answered.append(content)

            def _send(self, status, obj, headers=None):
                data = json.dumps(obj).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                             **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def content(body: dict) -> str:
        return json.dumps(body["messages"], sort_keys=True)

    @staticmethod
    def default_reply(text: str, parts: list) -> str:
        seen = "an image and " if len(parts) > 1 else ""
        first_line = text.splitlines()[0]
        return f"<think>I see {seen}the words: {first_line}</think><answer>{first_line.split()[-1]}</answer>"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
