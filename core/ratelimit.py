"""A sliding-window rate limit on endpoint requests: at most N requests and T tokens in any 60 s.
It is the project's one rate limiter; core.openai_api.Endpoint applies it to every call.

Frontier APIs bill and throttle per minute; staying under their limits is cheaper than collecting
429s and backing off. `acquire(tokens)` waits (never drops) until the request fits the window. A
single request larger than the token budget is let through alone, so nothing can wait forever.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable

WINDOW_S = 60.0


class RateLimiter:
    def __init__(self, requests_per_minute: int = 0, tokens_per_minute: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute   # 0 = unlimited
        self._clock, self._sleep = clock, sleep
        self._events: deque[tuple[float, int]] = deque()             # (time, tokens) in the window
        self.waited_s = 0.0

    @property
    def unlimited(self) -> bool:
        return self.rpm <= 0 and self.tpm <= 0

    def _wait_needed(self, now: float, tokens: int) -> float:
        while self._events and self._events[0][0] <= now - WINDOW_S:
            self._events.popleft()
        if not self._events:
            return 0.0
        used = sum(n for _, n in self._events)
        if (self.rpm <= 0 or len(self._events) < self.rpm) and (self.tpm <= 0 or used + tokens <= self.tpm):
            return 0.0
        return self._events[0][0] + WINDOW_S - now   # until the oldest request leaves the window

    async def acquire(self, tokens: int = 0) -> None:
        if self.unlimited:
            return
        while (wait := self._wait_needed(self._clock(), tokens)) > 0:
            self.waited_s += wait
            await self._sleep(wait)
        self._events.append((self._clock(), tokens))
