"""Every OpenAI-compatible endpoint the project talks to (frontier APIs, `vllm serve`): teachers,
judges, engine backends, main agents.

The official `openai` SDK (`AsyncOpenAI`) speaks the protocol and owns the retry policy: timeouts,
retries with exponential backoff and jitter on 408/409/429/5xx, timeouts and dropped connections,
honouring `Retry-After`. It is the only retry layer for endpoints. `Endpoint` adds what the SDK
does not do: the model name, bounded concurrency, our per-minute rate limit (core.ratelimit), and
one error type: when the SDK gives up, `EndpointError` names the URL, the status and the body.

    async with Endpoint(base_url, model, timeout_s=60, max_retries=4, requests_per_minute=500) as ep:
        resp = await ep.chat(messages, max_tokens=256, extra_body={"top_k": 20})
        text = message_text(resp)
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import openai
from openai.types import Completion
from openai.types.chat import ChatCompletion

from core.errors import UserError
from core.ratelimit import RateLimiter


class EndpointError(UserError, RuntimeError):
    """An endpoint request that failed for good (after the SDK's retries, or a non-retryable status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Endpoint:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0, max_retries: int = 4,
                 max_concurrency: int = 32, requests_per_minute: int = 0, tokens_per_minute: int = 0):
        if not base_url:
            raise ValueError("OpenAI-compatible endpoint: base_url is empty; set it to e.g. http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self._sdk: openai.AsyncOpenAI | None = None
        self._sem = asyncio.Semaphore(max_concurrency)

    @property
    def sdk(self) -> openai.AsyncOpenAI:
        """The SDK client, made on first use (again after `close`: its connections belong to one event loop)."""
        if self._sdk is None or self._sdk.is_closed():
            # A local `vllm serve` needs no key, but the SDK refuses an empty one.
            self._sdk = openai.AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or "none",
                                           timeout=self.timeout_s, max_retries=self.max_retries)
        return self._sdk

    @staticmethod
    def from_config(c: Any, model: str, base_url: str | None = None) -> "Endpoint":
        """From a config section with the endpoint keys (rollout.engine, judge): base_url, api_key_env,
        request_timeout_s, max_retries, max_concurrency, requests_per_minute, tokens_per_minute."""
        return Endpoint(base_url or c.base_url, model, api_key_env=c.api_key_env, timeout_s=c.request_timeout_s,
                        max_retries=c.max_retries, max_concurrency=c.max_concurrency,
                        requests_per_minute=c.requests_per_minute, tokens_per_minute=c.tokens_per_minute)

    async def close(self) -> None:
        if self._sdk is not None:
            await self._sdk.close()
            self._sdk = None
        self._sem = asyncio.Semaphore(self.max_concurrency)   # a later event loop gets fresh primitives

    async def __aenter__(self) -> "Endpoint":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> ChatCompletion:
        """chat.completions.create; params (max_tokens, response_format, tools, extra_body, ...) pass through."""
        tokens = sum(len(str(m.get("content") or "")) for m in messages) // 4 + int(params.get("max_tokens") or 0)
        return await self._call("POST /chat/completions", tokens, self.sdk.chat.completions.create,
                                model=self.model, messages=messages, **params)

    async def completions(self, prompt: str | list[int], **params: Any) -> Completion:
        """completions.create (token-id prompts work on vLLM servers)."""
        tokens = (len(prompt) if isinstance(prompt, list) else len(prompt) // 4) + int(params.get("max_tokens") or 0)
        return await self._call("POST /completions", tokens, self.sdk.completions.create,
                                model=self.model, prompt=prompt, **params)

    async def _call(self, what: str, tokens: int, create, **kwargs: Any) -> Any:
        # One limiter acquisition per call: the SDK's retries of a 429/5xx happen inside it.
        await self.limiter.acquire(tokens if self.limiter.tpm > 0 else 0)
        async with self._sem:
            try:
                return await create(**kwargs)
            except openai.APIStatusError as e:
                raise EndpointError(f"{what} at {self.base_url} -> HTTP {e.status_code}: {e.response.text[:300]}",
                                    e.status_code) from None
            except openai.APITimeoutError:
                raise EndpointError(f"{what} at {self.base_url}: no answer within {self.timeout_s:g} s "
                                    f"(after {self.max_retries} retries)") from None
            except openai.APIConnectionError as e:
                raise EndpointError(f"endpoint {self.base_url} is unreachable ({e.__cause__ or e}); "
                                    "check the URL and that the server is running") from None
            except json.JSONDecodeError as e:   # a 200 whose body is not JSON
                raise EndpointError(f"{what} at {self.base_url}: the answer is not JSON ({e})") from None

    async def check(self) -> None:
        """Fail early, before any work: the endpoint answers and serves `self.model`."""
        try:
            served = [m.id async for m in self.sdk.models.list()]
        except openai.APIStatusError as e:
            raise EndpointError(f"GET {self.base_url}/models -> HTTP {e.status_code}: {e.response.text[:300]}",
                                e.status_code) from None
        except openai.APIError as e:
            raise EndpointError(f"endpoint {self.base_url} is unreachable ({e.__cause__ or e}); "
                                "check the URL and that the server is running") from None
        if served and self.model not in served:
            raise EndpointError(f"endpoint {self.base_url} does not serve model '{self.model}'; it serves: "
                                f"{', '.join(served)}")


def message_text(response: ChatCompletion) -> str:
    """The assistant text of a chat completion ('' when absent)."""
    try:
        return response.choices[0].message.content or ""
    except (AttributeError, IndexError, TypeError):
        raise EndpointError(f"malformed chat-completions response: {str(response)[:300]}") from None
