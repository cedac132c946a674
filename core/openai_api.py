"""One async client for every OpenAI-compatible endpoint the project talks to.

Frontier APIs and `vllm serve` deployments serve as teachers, judges, baselines and main agents.
They all fail the same ways (429, 5xx, hangs, dropped connections), so one client owns the
policy: bounded concurrency, request/token rate limits, per-request timeouts, and retries with
exponential backoff + jitter that honour `Retry-After`. When retries run out it raises
`EndpointError` with the URL, the status and an excerpt of the body.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from core.errors import UserError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(UserError, RuntimeError):
    """An endpoint request that failed for good (after retries, or a non-retryable status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class _Window:
    """A sliding one-minute budget (requests or tokens); 0 = unlimited."""
    per_minute: int
    spent: list[tuple[float, int]]

    async def acquire(self, amount: int) -> None:
        if self.per_minute <= 0:
            return
        amount = min(amount, self.per_minute)
        while True:
            now = time.monotonic()
            self.spent = [(t, n) for t, n in self.spent if now - t < 60.0]
            if sum(n for _, n in self.spent) + amount <= self.per_minute:
                self.spent.append((now, amount))
                return
            await asyncio.sleep(max(0.05, 60.0 - (now - self.spent[0][0])))


def backoff_delay(attempt: int, base_s: float = 0.5, cap_s: float = 30.0, retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff: uniform(0, min(cap, base * 2**attempt)); Retry-After wins when given."""
    if retry_after is not None:
        return min(cap_s, retry_after)
    return random.uniform(0, min(cap_s, base_s * (2 ** attempt)))


class OpenAIClient:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *,
                 api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120.0, max_retries: int = 4,
                 max_concurrency: int = 32, requests_per_minute: int = 0, tokens_per_minute: int = 0,
                 backoff_base_s: float = 0.5):
        if not base_url:
            raise ValueError("OpenAI-compatible endpoint: base_url is empty; set it to e.g. http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env, "")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self._sem = asyncio.Semaphore(max_concurrency)
        self._requests = _Window(requests_per_minute, [])
        self._tokens = _Window(tokens_per_minute, [])
        self._session: aiohttp.ClientSession | None = None
        self.stats = {"requests": 0, "retries": 0, "failures": 0, "prompt_tokens": 0, "completion_tokens": 0}

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "OpenAIClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """POST /chat/completions; params (temperature, max_tokens, response_format, tools, ...) pass through."""
        body = {"model": self.model, "messages": messages, **params}
        estimate = sum(len(str(m.get("content") or "")) for m in messages) // 4 + int(params.get("max_tokens") or 0)
        return await self._post("/chat/completions", body, estimate)

    async def completions(self, prompt: str | list[int], **params: Any) -> dict[str, Any]:
        """POST /completions (token-id prompts work on vLLM servers)."""
        body = {"model": self.model, "prompt": prompt, **params}
        estimate = (len(prompt) if isinstance(prompt, list) else len(prompt) // 4) + int(params.get("max_tokens") or 0)
        return await self._post("/completions", body, estimate)

    async def list_models(self) -> list[str]:
        session = await self._http()
        url = f"{self.base_url}/models"
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                text = await r.text()
                if r.status != 200:
                    raise EndpointError(f"GET {url} -> HTTP {r.status}: {text[:300]}", r.status)
                return [m["id"] for m in json.loads(text).get("data", [])]
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise EndpointError(f"endpoint {self.base_url} is unreachable ({type(e).__name__}: {e}); "
                                f"check the URL and that the server is running") from None

    async def check(self) -> None:
        """Fail early, before any work: the endpoint answers and serves `self.model`."""
        served = await self.list_models()
        if served and self.model not in served:
            raise EndpointError(f"endpoint {self.base_url} does not serve model '{self.model}'; it serves: "
                                f"{', '.join(served)}")

    async def _post(self, path: str, body: dict[str, Any], token_estimate: int) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        last = ""
        last_status: int | None = None
        for attempt in range(self.max_retries + 1):
            await self._requests.acquire(1)
            await self._tokens.acquire(max(1, token_estimate))
            retry_after = None
            async with self._sem:
                self.stats["requests"] += 1
                try:
                    session = await self._http()
                    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                        text = await r.text()
                        if r.status == 200:
                            try:
                                data = json.loads(text)
                            except json.JSONDecodeError:
                                last, last_status = f"HTTP 200 with a body that is not JSON: {text[:300]!r}", 200
                            else:
                                usage = data.get("usage") or {}
                                self.stats["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                                self.stats["completion_tokens"] += int(usage.get("completion_tokens") or 0)
                                return data
                        else:
                            last, last_status = f"HTTP {r.status}: {text[:300]}", r.status
                            if r.status not in RETRYABLE_STATUS:
                                break
                            ra = r.headers.get("Retry-After")
                            retry_after = float(ra) if ra and ra.replace(".", "", 1).isdigit() else None
                except asyncio.TimeoutError:
                    last, last_status = f"no answer within {self.timeout_s:g} s", None
                except aiohttp.ClientError as e:
                    last, last_status = f"{type(e).__name__}: {e}", None
            if attempt < self.max_retries:
                self.stats["retries"] += 1
                await asyncio.sleep(backoff_delay(attempt, self.backoff_base_s, retry_after=retry_after))
        self.stats["failures"] += 1
        raise EndpointError(f"POST {url} failed after {attempt + 1} attempt(s): {last}", last_status)


def message_text(response: dict[str, Any]) -> str:
    """The assistant text of a chat-completions response ('' when absent)."""
    try:
        return response["choices"][0]["message"].get("content") or ""
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"malformed chat-completions response: {json.dumps(response)[:300]}") from None
