"""The per-minute limits (core.ratelimit): requests and tokens in a sliding 60 s window, on a fake clock
(so the test takes no real minute), and through the judge pool with the OpenAI judge on loopback."""
from __future__ import annotations

import asyncio

import pytest

from judge.config import JudgeConfig
from core.ratelimit import RateLimiter
from judge.llm import render_prompt
from judge.pool import JudgePool
from test_judge import _llm_json, ladder, make_task  # tests/ is on sys.path


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(round(s, 6))
        self.now += s


def test_requests_per_minute_window():
    ft = FakeTime()
    lim = RateLimiter(requests_per_minute=2, clock=ft.clock, sleep=ft.sleep)

    async def go():
        await lim.acquire()
        ft.now = 10.0
        await lim.acquire()
        await lim.acquire()          # third within the minute: waits until t=60 (first one leaves)
        assert ft.now == pytest.approx(60.0)
        await lim.acquire()          # the one at t=10 leaves at t=70
        assert ft.now == pytest.approx(70.0)
    asyncio.run(go())
    assert ft.sleeps == [50.0, 10.0] and lim.waited_s == pytest.approx(60.0)


def test_tokens_per_minute_and_oversized_request():
    ft = FakeTime()
    lim = RateLimiter(tokens_per_minute=1000, clock=ft.clock, sleep=ft.sleep)

    async def go():
        await lim.acquire(600)
        await lim.acquire(300)       # 900 <= 1000: no wait
        assert ft.now == 0.0
        await lim.acquire(200)       # 1100 > 1000: wait for the window to empty
        assert ft.now == pytest.approx(60.0)
        ft.now = 200.0
        await lim.acquire(5000)      # alone in the window: let through, never stuck
        assert ft.now == 200.0
    asyncio.run(go())


def test_openai_judge_applies_the_limit_to_each_request(tmp_path):
    from core.testing.openai_server import Reply, ScriptedOpenAIServer
    trajs = ladder()[:5]
    for i, t in enumerate(trajs):
        t.messages = [{"role": "user", "content": f"episode {i}"}]
    with ScriptedOpenAIServer([Reply(content=_llm_json()) for _ in trajs]) as srv:
        cfg = JudgeConfig(backend="openai", base_url=srv.base_url, model_name=srv.model, max_tokens=100,
                          requests_per_minute=3, tokens_per_minute=10**9, cache_dir=str(tmp_path))
        pool = JudgePool(cfg)
        ft = FakeTime()
        pool.judge.client.limiter = RateLimiter(cfg.requests_per_minute, cfg.tokens_per_minute, clock=ft.clock,
                                                sleep=ft.sleep)
        pool.score({"t1": make_task()}, trajs)
    assert all(t.reward is not None for t in trajs) and len(srv.requests) == 5
    assert ft.sleeps and ft.now >= 60.0        # 5 requests at 3/minute: two waited for the next minute
    assert pool.metrics()["judge/rate_limit_wait_s"] == pytest.approx(ft.now)
    # The token estimate covers the rendered prompt (about 4 characters a token) and the completion budget.
    spent = [n for _, n in pool.judge.client.limiter._events]   # the requests still in the window
    assert spent and all(n > 100 + len(render_prompt(make_task(), trajs[0])[1]["content"]) // 4
                                   for n in spent)
