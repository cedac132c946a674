"""The episode loop and worker function against a real OpenAI-protocol HTTP server whose replies are
scripted (core.testing) and real bwrap sandboxes: commands run, format errors, the turn cap,
and failures (engine error, timeout, setup) that come back marked instead of dropped."""
import asyncio

import pytest

from rollout.config import RolloutConfig
from rollout.engine.openai_engine import OpenAIEngine
from rollout.episode import run_episode
from rollout.worker import run_requests, summarize
from tasks.types import Task
from core.openai_api import Endpoint
from core.testing.openai_server import Reply, ScriptedOpenAIServer

REPORT = "<report><status>success</status><summary>file says hello</summary><details>exit 0</details></report>"


@pytest.fixture
def task(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("hello from the repo\n")
    return Task(id="t1", language="python", category="run_script", project="p", repo_dir=str(repo),
                request="Print a.txt and tell me what it says.")


def _cfg(**episode):
    cfg = RolloutConfig()
    cfg.sandbox.command_timeout_s = 10
    for k, v in episode.items():
        setattr(cfg.episode, k, v)
    return cfg


def _run(srv, tok, task, cfg, retries=0, timeout=10.0):
    async def go():
        client = Endpoint(srv.base_url, srv.model, timeout_s=timeout, max_retries=retries)
        try:
            return await run_episode(task, OpenAIEngine(client, api="chat", tokenizer=tok), tok, cfg)
        finally:
            await client.close()
    return asyncio.run(go())


def test_command_runs_in_sandbox_then_report(tok, task):
    with ScriptedOpenAIServer([Reply("Let me look.\n<command>cat a.txt && cd /tmp</command>"),
                               Reply("<command>pwd</command>"), Reply(REPORT)]) as srv:
        tr = _run(srv, tok, task, _cfg(max_turns=5))
        sent = srv.requests
    assert tr.error is None and tr.finish_reason == "report"
    assert tr.report == {"status": "success", "summary": "file says hello", "details": "exit 0"}
    assert [t.action for t in tr.turns] == ["command", "command", "report"]
    assert tr.turns[0].exit_code == 0 and "hello from the repo" in tr.turns[0].observation
    assert "/tmp" in tr.turns[1].observation  # shell state (cwd) persists across turns
    # The endpoint saw the observation as the next user message, and the stop-string-less chat
    # reply got its block closed back.
    assert sent[1]["messages"][-1]["content"] == tr.turns[0].observation
    assert sent[0]["stop"] == ["</command>", "</report>"]
    assert len(tr.token_ids) == len(tr.response_mask) == len(tr.logprobs)
    assert tr.metadata["token_exact"] is False and tr.metadata["format_errors"] == 0
    assert [m["role"] for m in tr.messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]


def test_format_errors_and_turn_cap(tok, task):
    script = [Reply("I am not sure."), Reply("<command>ls</command><command>pwd</command>"),
              Reply("<command>echo last</command>")]
    with ScriptedOpenAIServer(script) as srv:
        tr = _run(srv, tok, task, _cfg(max_turns=3))
        assert len(srv.requests) == 3
    assert tr.finish_reason == "max_turns" and tr.report is None and tr.error is None
    assert [t.action for t in tr.turns] == ["format_error", "format_error", "command"]
    assert tr.metadata["format_errors"] == 2
    assert "no <command> or <report>" in tr.turns[0].observation and "Nothing was run" in tr.turns[0].observation
    assert "Turns left: 2." in tr.turns[0].observation
    assert "last turn" in tr.turns[1].observation
    # The cap: nothing is appended after the last turn.
    assert tr.messages[-1]["role"] == "assistant"


def test_engine_error_is_marked_not_dropped(tok, task):
    with ScriptedOpenAIServer([Reply(status=500, raw_body='{"error": "boom"}')]) as srv:
        tr = _run(srv, tok, task, _cfg())
    assert tr.finish_reason == "error" and tr.error.startswith("engine:") and "500" in tr.error
    assert tr.task_id == "t1" and tr.prompt_len > 0 and len(tr.token_ids) == tr.prompt_len


def test_episode_timeout(tok, task):
    """Out of time while the engine generates (a slow engine, not the policy's commands): an
    infrastructure failure, marked with an error so training masks it."""
    with ScriptedOpenAIServer([Reply("<command>ls</command>"), Reply(REPORT, delay_s=3)]) as srv:
        tr = _run(srv, tok, task, _cfg(episode_timeout_s=1.5))
    assert tr.finish_reason == "timeout" and tr.error.startswith("timeout")
    assert len(tr.turns) == 1 and tr.turns[0].exit_code == 0  # the partial episode is kept
    m = summarize([tr])
    assert m["episodes_infra_error"] == 1 and m["episodes_timed_out"] == 0


def test_a_timeout_in_the_policys_own_command_is_a_judged_failure(tok, task):
    """Out of time in a command the policy ran (it hangs): the policy's failure, not the
    infrastructure's. No error (so not masked out of training), finish_reason timeout, the cut command
    flagged; the judges score it as an episode without a report (the failure reward), and the rollout
    metrics count it apart from infrastructure errors."""
    from judge.llm import render_prompt
    from judge.pool import JudgePool
    from rollout.engine.base import Generation
    from terminus.config import load_config

    class Hangs:
        api = "completions"

        async def generate(self, prompt_ids, sampling):
            ids = tok.encode("<command>sleep 8</command>", add_special_tokens=False)
            return Generation(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="stop")

    tr = asyncio.run(run_episode(task, Hangs(), tok, _cfg(episode_timeout_s=1.5)))
    assert tr.error is None and tr.finish_reason == "timeout" and tr.report is None
    assert len(tr.turns) == 1 and tr.turns[0].timed_out and tr.turns[0].exec_time_s >= 1.0
    assert sum(tr.response_mask) == tr.turns[0].num_generated_tokens > 0   # its tokens are there to train on
    m = summarize([tr])
    assert m["episodes_timed_out"] == 1 and m["episodes_infra_error"] == 0 and m["failed"] == 0
    judged = JudgePool(load_config("tiny_cpu").judge).score({task.id: task}, [tr])[0]
    assert judged.reward is not None and judged.reward <= 0.0, judged.verdict   # judged: a failure, not masked
    assert "no report (finish_reason=timeout)" in judged.verdict["failures"]["premature_stop"]["evidence"]
    prompt = render_prompt(task, tr)[1]["content"]   # what an LLM judge is shown
    assert "finish: timeout" in prompt and "$ sleep 8\n(exit None, timed out)" in prompt and "(no report)" in prompt


def test_setup_failure_and_worker_groups(tok, task, tmp_path):
    bad = Task(**{**task.__dict__, "id": "bad", "setup": ["true", "echo nope; exit 3"]})
    good = Task(**{**task.__dict__, "id": "good", "setup": ["echo ready > setup.txt"]})

    def script(body):
        last = body["messages"][-1]["content"]
        if "<observation>" in last:
            return Reply(REPORT)
        return Reply("<command>cat setup.txt</command>")

    async def go(srv):
        client = Endpoint(srv.base_url, srv.model, timeout_s=10, max_retries=0)
        try:
            return await run_requests([(good, 3), (bad, 2)], OpenAIEngine(client, api="chat", tokenizer=tok),
                                      tok, _cfg(), max_concurrent=4)
        finally:
            await client.close()

    with ScriptedOpenAIServer(script) as srv:
        groups = asyncio.run(go(srv))
    assert [len(g) for g in groups] == [3, 2]
    assert {t.task_id for t in groups[0]} == {"good"} and len({t.group_id for t in groups[0]}) == 1
    assert groups[0][0].group_id != groups[1][0].group_id
    assert all(t.finish_reason == "report" and "ready" in t.turns[0].observation for t in groups[0])
    assert all(t.error.startswith("setup:") and "exited 3" in t.error for t in groups[1])
    m = summarize([t for g in groups for t in g])
    assert m["episodes"] == 5 and m["failed"] == 2 and m["failures"] == {"setup": 2} and m["reports"] == 3
    assert sum(len(t.turns) for t in groups[0]) == 6 and m["format_errors"] == 0


def test_chat_reply_without_stop_string_is_closed_and_context_limit(tok, task):
    # Chat endpoints drop the matched stop string: "<command>ls" comes back, the block is re-closed.
    with ScriptedOpenAIServer([Reply("<command>echo hi"), Reply(REPORT)]) as srv:
        tr = _run(srv, tok, task, _cfg())
    assert tr.turns[0].action == "command" and tr.turns[0].text == "<command>echo hi</command>"
    assert tr.finish_reason == "report"
    # A context smaller than the prompt: the episode ends before any generation, marked context_limit.
    with ScriptedOpenAIServer([]) as srv:
        tr = _run(srv, tok, task, _cfg(max_context_tokens=256))
        assert srv.requests == []
    assert tr.finish_reason == "context_limit" and tr.error is None and tr.turns == []


def test_setup_overlaps_first_turn_and_is_outside_the_budget(tok, task):
    slow = Task(**{**task.__dict__, "setup": ["sleep 2", "echo done > marker"]})
    with ScriptedOpenAIServer([Reply("<command>cat marker</command>"), Reply(REPORT)]) as srv:
        tr = _run(srv, tok, slow, _cfg(episode_timeout_s=1.5))
    assert tr.error is None and tr.finish_reason == "report"
    assert "done" in tr.turns[0].observation            # the first command ran after setup finished
    assert tr.metadata["setup_s"] >= 2.0 and tr.turns[0].exec_time_s < 1.5


def test_a_turn_cut_at_its_token_budget_is_flagged(tok, task):
    """The engine's finish reason "length" (max_tokens reached) marks the turn `cut_off`; the rollout
    metrics count such turns (turns_cut_off_frac) and episodes that ended on one."""
    from rollout.engine.base import Generation

    class CutFirst:   # the first turn runs out of tokens mid-command, the second reports
        api = "completions"

        def __init__(self):
            self.budgets = []

        async def generate(self, prompt_ids, sampling):
            self.budgets.append(sampling.max_tokens)
            cut = len(self.budgets) == 1
            ids = tok.encode("<command>ls -la and then" if cut else REPORT, add_special_tokens=False)
            return Generation(token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason="length" if cut else "stop")

    engine = CutFirst()
    tr = asyncio.run(run_episode(task, engine, tok, _cfg(max_turns=3)))
    assert tr.error is None and tr.finish_reason == "report"
    assert [(u.action, u.cut_off) for u in tr.turns] == [("format_error", True), ("report", False)]
    m = summarize([tr])
    assert m["turns_cut_off"] == 1 and m["turns_cut_off_frac"] == 0.5 and m["episodes_cut_off"] == 0
