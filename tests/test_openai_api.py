"""The shared OpenAI-compatible client against a real HTTP server on loopback with scripted answers."""
import asyncio
import time

import pytest

from core.openai_api import EndpointError, OpenAIClient, backoff_delay, message_text
from core.testing.openai_server import Reply, ScriptedOpenAIServer


def run(coro):
    return asyncio.run(coro)


async def _chat(srv, **kw):
    async with OpenAIClient(srv.base_url, srv.model, api_key="k", backoff_base_s=0.01, **kw) as c:
        r = await c.chat([{"role": "user", "content": "hi"}], max_tokens=8)
        return r, c.stats


def test_answer_and_request_recorded():
    with ScriptedOpenAIServer([Reply(content="hello")]) as srv:
        r, stats = run(_chat(srv))
    assert message_text(r) == "hello"
    assert srv.requests[0]["messages"][0]["content"] == "hi" and srv.requests[0]["max_tokens"] == 8
    assert stats["requests"] == 1 and stats["retries"] == 0


def test_429_and_500_are_retried_then_succeed():
    with ScriptedOpenAIServer([Reply(status=429, headers={"Retry-After": "0.05"}), Reply(status=500),
                               Reply(content="ok")]) as srv:
        r, stats = run(_chat(srv))
    assert message_text(r) == "ok"
    assert stats["retries"] == 2 and len(srv.requests) == 3


def test_hang_times_out_and_retries():
    with ScriptedOpenAIServer([Reply(content="late", delay_s=5), Reply(content="ok")]) as srv:
        t = time.monotonic()
        r, stats = run(_chat(srv, timeout_s=0.5))
    assert message_text(r) == "ok" and stats["retries"] == 1
    assert time.monotonic() - t < 4


def test_exhausted_retries_raise_clear_error():
    with ScriptedOpenAIServer([Reply(status=500)] * 3) as srv:
        with pytest.raises(EndpointError, match=r"failed after 3 attempt\(s\): HTTP 500"):
            run(_chat(srv, max_retries=2))


def test_non_retryable_status_fails_at_once():
    with ScriptedOpenAIServer([Reply(status=400), Reply(content="never")]) as srv:
        with pytest.raises(EndpointError) as e:
            run(_chat(srv))
    assert e.value.status == 400 and len(srv.requests) == 1


def test_malformed_body_is_retried():
    with ScriptedOpenAIServer([Reply(raw_body="{not json"), Reply(content="ok")]) as srv:
        r, _ = run(_chat(srv))
    assert message_text(r) == "ok"


def test_unreachable_and_unknown_model_are_clear():
    async def check(url, model):
        async with OpenAIClient(url, model, timeout_s=2) as c:
            await c.check()

    with ScriptedOpenAIServer([]) as srv:
        with pytest.raises(EndpointError, match="does not serve model 'other'"):
            run(check(srv.base_url, "other"))
        run(check(srv.base_url, srv.model))
    with pytest.raises(EndpointError, match="unreachable"):
        run(check(srv.base_url, "x"))  # server is gone now


def test_tool_calls_are_returned():
    with ScriptedOpenAIServer([Reply(content=None, tool_calls=[{"name": "terminal", "arguments": {"cmd": "ls"}}])]) as srv:
        r, _ = run(_chat(srv))
    call = r["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "terminal" and '"cmd": "ls"' in call["function"]["arguments"]


def test_request_rate_limit_blocks_past_the_budget():
    async def burst(srv):
        async with OpenAIClient(srv.base_url, srv.model, requests_per_minute=2) as c:
            await asyncio.gather(*(c.chat([{"role": "user", "content": "x"}]) for _ in range(2)))
            with pytest.raises(asyncio.TimeoutError):  # the third must wait for the window to roll
                await asyncio.wait_for(c.chat([{"role": "user", "content": "x"}]), timeout=0.5)

    with ScriptedOpenAIServer([Reply(content="a"), Reply(content="b"), Reply(content="c")]) as srv:
        run(burst(srv))
        assert len(srv.requests) == 2


def test_backoff_is_bounded_and_honours_retry_after():
    assert backoff_delay(0, base_s=1, retry_after=3.0) == 3.0
    assert all(0 <= backoff_delay(a, base_s=1, cap_s=4) <= min(4, 2 ** a) for a in range(8))
