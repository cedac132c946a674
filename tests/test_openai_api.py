"""core.openai_api.Endpoint (the `openai` SDK + our rate limit + EndpointError) against a real HTTP server on
loopback with scripted answers: what the SDK must do for us (Retry-After, retries, timeouts, extra_body)."""
import asyncio
import time

import pytest

from core.openai_api import Endpoint, EndpointError, message_text
from core.testing.openai_server import Reply, ScriptedOpenAIServer


def run(coro):
    return asyncio.run(coro)


async def _chat(srv, **kw):
    async with Endpoint(srv.base_url, srv.model, api_key="k", **kw) as c:
        return await c.chat([{"role": "user", "content": "hi"}], max_tokens=8)


def test_answer_and_request_recorded():
    with ScriptedOpenAIServer([Reply(content="hello")]) as srv:
        r = run(_chat(srv))
    assert message_text(r) == "hello"
    assert srv.requests[0]["messages"][0]["content"] == "hi" and srv.requests[0]["max_tokens"] == 8
    assert srv.requests[0]["model"] == srv.model


def test_429_retry_after_is_honoured():
    # The SDK's own first backoff is at most 0.5 s: a wait of 1.5 s can only come from Retry-After.
    with ScriptedOpenAIServer([Reply(status=429, headers={"Retry-After": "1.5"}), Reply(content="ok")]) as srv:
        t = time.monotonic()
        r = run(_chat(srv))
        waited = time.monotonic() - t
    assert message_text(r) == "ok" and len(srv.requests) == 2
    assert 1.4 <= waited < 5


def test_500_is_retried_then_surfaces_as_endpoint_error():
    # max_retries=1, not the SDK's default of 2: the third answer is never asked for.
    with ScriptedOpenAIServer([Reply(status=500)] * 2 + [Reply(content="never")]) as srv:
        with pytest.raises(EndpointError, match=r"HTTP 500: .*scripted HTTP 500") as e:
            run(_chat(srv, max_retries=1))
        assert len(srv.requests) == 2
    assert e.value.status == 500 and srv.base_url in str(e.value)


def test_500_then_success():
    with ScriptedOpenAIServer([Reply(status=500), Reply(content="ok")]) as srv:
        assert message_text(run(_chat(srv))) == "ok"


def test_timeout_is_enforced():
    with ScriptedOpenAIServer([Reply(content="late", delay_s=5), Reply(content="ok")]) as srv:
        t = time.monotonic()
        assert message_text(run(_chat(srv, timeout_s=0.5))) == "ok"   # the hang timed out, the retry answered
        assert time.monotonic() - t < 4
    with ScriptedOpenAIServer([Reply(content="late", delay_s=5)]) as srv:
        t = time.monotonic()
        with pytest.raises(EndpointError, match=r"no answer within 0.5 s"):
            run(_chat(srv, timeout_s=0.5, max_retries=0))
        assert time.monotonic() - t < 3


def test_extra_body_reaches_the_server():
    async def go(srv):
        async with Endpoint(srv.base_url, srv.model) as c:
            await c.chat([{"role": "user", "content": "x"}], max_tokens=4,
                         extra_body={"top_k": 20, "structured_outputs": {"regex": "a+"}})
    with ScriptedOpenAIServer([Reply(content="a")]) as srv:
        run(go(srv))
    assert srv.requests[0]["top_k"] == 20 and srv.requests[0]["structured_outputs"] == {"regex": "a+"}


def test_non_retryable_status_fails_at_once():
    with ScriptedOpenAIServer([Reply(status=400), Reply(content="never")]) as srv:
        with pytest.raises(EndpointError) as e:
            run(_chat(srv))
    assert e.value.status == 400 and len(srv.requests) == 1


def test_malformed_body_is_a_clear_error():
    with ScriptedOpenAIServer([Reply(raw_body="{not json")]) as srv:
        with pytest.raises(EndpointError, match="not JSON"):
            run(_chat(srv))
    with ScriptedOpenAIServer([Reply(raw_body='{"no": "choices"}')]) as srv:
        with pytest.raises(EndpointError, match="malformed chat-completions response"):
            message_text(run(_chat(srv)))


def test_unreachable_and_unknown_model_are_clear():
    async def check(url, model):
        async with Endpoint(url, model, timeout_s=2, max_retries=0) as c:
            await c.check()

    with ScriptedOpenAIServer([]) as srv:
        with pytest.raises(EndpointError, match="does not serve model 'other'"):
            run(check(srv.base_url, "other"))
        run(check(srv.base_url, srv.model))
    with pytest.raises(EndpointError, match="unreachable"):
        run(check(srv.base_url, "x"))  # server is gone now
    with pytest.raises(EndpointError, match="unreachable"):  # also through chat, after the SDK's retries
        run(_chat(srv, max_retries=1))


def test_tool_calls_are_returned():
    with ScriptedOpenAIServer([Reply(content=None, tool_calls=[{"name": "terminal", "arguments": {"cmd": "ls"}}])]) as srv:
        r = run(_chat(srv))
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "terminal" and '"cmd": "ls"' in call.function.arguments


def test_request_rate_limit_blocks_past_the_budget():
    async def burst(srv):
        async with Endpoint(srv.base_url, srv.model, requests_per_minute=2) as c:
            await asyncio.gather(*(c.chat([{"role": "user", "content": "x"}]) for _ in range(2)))
            with pytest.raises(asyncio.TimeoutError):  # the third must wait for the window to roll
                await asyncio.wait_for(c.chat([{"role": "user", "content": "x"}]), timeout=0.5)

    with ScriptedOpenAIServer([Reply(content="a"), Reply(content="b"), Reply(content="c")]) as srv:
        run(burst(srv))
        assert len(srv.requests) == 2


def test_closed_endpoint_works_again_in_a_new_event_loop():
    async def one(c):
        return message_text(await c.chat([{"role": "user", "content": "x"}]))

    with ScriptedOpenAIServer([Reply(content="a"), Reply(content="b")]) as srv:
        c = Endpoint(srv.base_url, srv.model)
        for want in ("a", "b"):
            async def go():
                try:
                    return await one(c)
                finally:
                    await c.close()
            assert run(go()) == want
