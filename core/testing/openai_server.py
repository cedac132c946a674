"""A scripted OpenAI-compatible server on loopback, for tests of code that talks to LLM endpoints.

It is a real HTTP server (the standard library's, one thread per connection) speaking the
chat-completions protocol; only the *answers* are scripted, so tests can exercise what a frontier
API does in practice: good answers, tool calls, malformed JSON, 429 with Retry-After, 500, and hangs.

    with ScriptedOpenAIServer([Reply(content="hi"), Reply(status=429), Reply(delay_s=30)]) as srv:
        client = Endpoint(srv.base_url, srv.model)
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

from core.net import free_port


@dataclass
class Reply:
    content: str | None = ""
    tool_calls: list[dict[str, Any]] | None = None  # [{"name": ..., "arguments": {...}}]
    status: int = 200
    raw_body: str | None = None     # sent verbatim (e.g. malformed JSON), overrides everything else
    delay_s: float = 0.0            # sleep before answering (a hang, when longer than the client timeout)
    headers: dict[str, str] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Script = Union[list[Reply], Callable[[dict[str, Any]], Reply]]


class ScriptedOpenAIServer:
    def __init__(self, script: Script, model: str = "scripted-model", port: int | None = None):
        self.script = script
        self.model = model
        self.port = port or free_port()
        self.requests: list[dict[str, Any]] = []
        self._queue = list(script) if isinstance(script, list) else None
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if self._queue is None:
                return self.script(body)  # type: ignore[operator]
            if not self._queue:
                return Reply(status=500, raw_body='{"error": "script exhausted"}')
            return self._queue.pop(0)

    def _chat(self, body: dict[str, Any]) -> tuple[int, dict[str, str], str]:
        """(status, headers, body text) of the answer to one chat-completions request."""
        reply = self._next(body)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.raw_body is not None:
            return reply.status, reply.headers, reply.raw_body
        if reply.status != 200:
            err = {"error": {"message": f"scripted HTTP {reply.status}", "type": "scripted", "code": reply.status}}
            return reply.status, reply.headers, json.dumps(err)
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": f"call_{uuid.uuid4().hex[:8]}", "type": "function",
                 "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
                for c in reply.tool_calls]
        prompt_chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
        usage = {"prompt_tokens": reply.prompt_tokens if reply.prompt_tokens is not None else prompt_chars // 4,
                 "completion_tokens": reply.completion_tokens if reply.completion_tokens is not None
                 else len(reply.content or "") // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return 200, reply.headers, json.dumps({
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": usage,
        })

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # keep-alive, as the SDK's connection pool expects

            def _send(self, status: int, headers: dict[str, str], text: str) -> None:
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True   # the client gave up (its timeout): nobody to answer

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {}, json.dumps({"error": {"message": f"no route {self.path}"}}))
                self._send(*server._chat(json.loads(raw or b"{}")))

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(404, {}, json.dumps({"error": {"message": f"no route {self.path}"}}))
                self._send(200, {}, json.dumps({"object": "list",
                                                "data": [{"id": server.model, "object": "model"}]}))

            def log_message(self, *args: Any) -> None:   # no access log on stderr
                pass

        return Handler

    def __enter__(self) -> "ScriptedOpenAIServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._httpd.daemon_threads = True   # a scripted hang does not hold up the test's exit
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(10)
