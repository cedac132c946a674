"""A scripted OpenAI-compatible server on loopback, for tests of code that talks to LLM endpoints.

It is a real aiohttp HTTP server speaking the chat-completions protocol; only the *answers*
are scripted, so tests can exercise what a frontier API does in practice: good answers,
tool calls, malformed JSON, 429 with Retry-After, 500, and hangs.

    with ScriptedOpenAIServer([Reply(content="hi"), Reply(status=429), Reply(delay_s=30)]) as srv:
        client = Endpoint(srv.base_url, srv.model)
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from aiohttp import web

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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _next(self, body: dict[str, Any]) -> Reply:
        if self._queue is None:
            return self.script(body)  # type: ignore[operator]
        if not self._queue:
            return Reply(status=500, raw_body='{"error": "script exhausted"}')
        return self._queue.pop(0)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        reply = self._next(body)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.raw_body is not None:
            return web.Response(status=reply.status, text=reply.raw_body, headers=reply.headers,
                                content_type="application/json")
        if reply.status != 200:
            err = {"error": {"message": f"scripted HTTP {reply.status}", "type": "scripted", "code": reply.status}}
            return web.json_response(err, status=reply.status, headers=reply.headers)
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
        return web.json_response({
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "message": message,
                         "finish_reason": "tool_calls" if reply.tool_calls else "stop"}],
            "usage": usage,
        }, headers=reply.headers)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    async def start_async(self) -> "ScriptedOpenAIServer":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, shutdown_timeout=1.0).start()
        return self

    async def stop_async(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # Sync use (pytest without an event loop): serve from a background thread.
    def __enter__(self) -> "ScriptedOpenAIServer":
        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start_async())
            self._ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted OpenAI server did not start")
        return self

    def __exit__(self, *exc) -> None:
        loop = self._loop
        if loop is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop_async(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread:
            self._thread.join(10)

    async def __aenter__(self) -> "ScriptedOpenAIServer":
        return await self.start_async()

    async def __aexit__(self, *exc) -> None:
        await self.stop_async()
