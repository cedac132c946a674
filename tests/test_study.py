"""The main-agent study end to end: a scripted main agent (tool calls over a real OpenAI-protocol
HTTP server on loopback) works on a repository task with {terminal} and with {terminal,
delegate_to_subagent}; delegation runs a real subagent episode (a scripted OpenAI-compatible
subagent) in a real bwrap sandbox. Checks the counts, tokens, report use, success, and that a
main-agent endpoint failing midway costs only that run."""
import asyncio
import json

import pytest

from rollout.config import RolloutConfig
from rollout.engine.openai_engine import OpenAIEngine
from evaluation.study import (StudyTask, episode_subagent, report_used, run_study, study_table,
                                       summarize)
from core.openai_api import Endpoint
from core.testing.openai_server import Reply, ScriptedOpenAIServer

CHECK_PY = "import sys\nprint('FAILED test_parse_header: expected 3, got 4')\nprint('1 failed, 7 passed')\nsys.exit(1)\n"


@pytest.fixture
def repo(tmp_path):
    d = tmp_path / "repo"
    d.mkdir()
    (d / "check.py").write_text(CHECK_PY)
    return d


def subagent_script(body):
    """The subagent: run the check, then report what it printed (facts taken from the observation)."""
    users = [m for m in body["messages"] if m["role"] == "user"]
    if len(users) == 1:
        return Reply("<command>python3 check.py</command>")
    seen = users[-1]["content"]
    name = "test_parse_header" if "test_parse_header" in seen else "unknown"
    return Reply(f"<report><status>failure</status><summary>{name} fails: expected 3, got 4</summary>"
                 f"<details>python3 check.py exited 1; 1 failed, 7 passed</details></report>")


def main_agent_script(body):
    """The main agent: delegate when it can, else run the command itself; then answer from what came back."""
    names = [t["function"]["name"] for t in body.get("tools", [])]
    last = body["messages"][-1]
    if "BREAK" in body["messages"][1]["content"]:
        return Reply(status=500)
    if last["role"] == "user":
        if "delegate_to_subagent" in names:
            return Reply("", tool_calls=[{"name": "delegate_to_subagent",
                                          "arguments": {"request": "Run python3 check.py and report failing tests."}}],
                         completion_tokens=20)
        return Reply("", tool_calls=[{"name": "terminal", "arguments": {"command": "python3 check.py"}}],
                     completion_tokens=15)
    failing = [w for w in last["content"].replace(":", " ").split() if w.startswith("test_")]
    return Reply(f"The failing test is {failing[0] if failing else 'none'}.", completion_tokens=10)


def test_report_used_heuristic():
    assert report_used("test_parse_header fails at parser.py:12", "so test_parse_header is broken")
    assert not report_used("test_parse_header fails at parser.py:12", "everything passes")


def test_study_with_and_without_subagent(tok, repo):
    rollout = RolloutConfig()
    rollout.sandbox.command_timeout_s = 10
    rollout.episode.max_turns = 4
    tasks = [StudyTask("diag", str(repo), "Which test fails in this repository?",
                       answer_patterns=[r"test_parse_header"]),
             StudyTask("broken", str(repo), "BREAK: the endpoint fails for this task", answer_patterns=["x"])]
    before = sorted(p.name for p in repo.iterdir())

    async def go(main_url, sub_url):
        main = Endpoint(main_url, "main", max_retries=0, timeout_s=10)
        sub = Endpoint(sub_url, "sub", max_retries=0, timeout_s=10)
        try:
            runner = episode_subagent(OpenAIEngine(sub, api="chat", tokenizer=tok), tok, rollout)
            return await run_study(tasks, main, rollout.sandbox, runner)
        finally:
            await main.close()
            await sub.close()

    with ScriptedOpenAIServer(main_agent_script, model="main") as main_srv, \
            ScriptedOpenAIServer(subagent_script, model="sub") as sub_srv:
        results = asyncio.run(go(main_srv.base_url, sub_srv.base_url))
        sub_requests = len(sub_srv.requests)

    by = {(r.task_id, r.condition): r for r in results}
    alone, helped = by[("diag", "terminal")], by[("diag", "delegate")]
    assert alone.error is None and helped.error is None
    assert alone.success and helped.success
    assert (alone.own_commands, alone.delegations) == (1, 0)
    assert (helped.own_commands, helped.delegations) == (0, 1)
    assert helped.used_report and not alone.used_report
    assert helped.subagent_turns == 2 and sub_requests == 2      # a real two-turn episode ran
    assert alone.input_tokens > 0 and helped.output_tokens == 30 and alone.output_tokens == 25
    # the endpoint failing for one task marks those runs only
    assert by[("broken", "terminal")].error and by[("broken", "delegate")].error
    assert "500" in by[("broken", "delegate")].error
    summary = summarize(results)
    assert summary["delegate"]["errors"] == 1 and summary["delegate"]["report_used_rate"] == 1.0
    table = study_table(summary)
    assert "{terminal, delegate_to_subagent}" in table and table.count("\n") == 3
    assert sorted(p.name for p in repo.iterdir()) == before
    json.dumps(summary)


def test_study_cli_prints_table_and_refuses_bad_main(tmp_path, repo):
    """`terminus study` end to end from a task file: the table on stdout, study.json written."""
    import subprocess
    import sys
    from pathlib import Path

    from tasks.types import Fact, GroundTruth, Task
    from evaluation.tasks_io import write_task_list
    terminus = str(Path(sys.executable).parent / "terminus")
    task = Task("diag", "python", "diagnose", "p", str(repo), "Which test fails in this repository?",
                ground_truth=GroundTruth(facts=[Fact("failing_test", "", [r"test_parse_header"])]))
    write_task_list([task], tmp_path / "tasks.jsonl")
    with ScriptedOpenAIServer(main_agent_script, model="main") as main_srv, \
            ScriptedOpenAIServer(subagent_script, model="sub") as sub_srv:
        base = [terminus, "study", "--tasks-file", str(tmp_path / "tasks.jsonl"), "--out", str(tmp_path / "s"),
                "--subagent", f"openai:sub@{sub_srv.base_url}", "rollout.sandbox.command_timeout_s=10"]
        r = subprocess.run(base + ["--main", f"openai:main@{main_srv.base_url}"], capture_output=True, text=True,
                           timeout=120)
        bad = subprocess.run(base + ["--main", f"openai:nope@{main_srv.base_url}"], capture_output=True, text=True,
                             timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "s" / "study.json").read_text())
    assert data["summary"]["terminal"]["success_rate"] == 1.0 and data["summary"]["delegate"]["delegations"] == 1.0
    assert "| {terminal, delegate_to_subagent} | 1 | 0 | 1.00 |" in r.stdout
    assert bad.returncode == 2 and "does not serve model 'nope'" in bad.stderr
