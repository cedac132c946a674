"""`terminus serve` as a real MCP server over stdio, driven by the official `mcp` client
(stdio_client + ClientSession): the tool runs a real episode (subagent behind an OpenAI-protocol
server on loopback) in a bwrap sandbox over the given directory, returns the report, and never
modifies that directory. Bad input: a bad workdir is a tool error; an unreachable endpoint stops
the server before it serves."""
import asyncio
import os
import subprocess
import sys
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from core.net import free_port
from core.testing.openai_server import Reply, ScriptedOpenAIServer

TERMINUS = str(Path(sys.executable).parent / "terminus")


def subagent_script(body):
    users = [m for m in body["messages"] if m["role"] == "user"]
    if len(users) == 1:  # try to modify the directory, and read it
        return Reply("<command>echo junk > notes.txt && rm a.txt && cat notes.txt</command>")
    return Reply("<report><status>success</status><summary>removed a.txt in the sandbox copy</summary>"
                 "<details>exit 0; notes.txt says junk</details></report>")


def _serve_args(url):
    return ["serve", "--config", "tiny_cpu", "--subagent", f"openai:sub@{url}", "rollout.engine.max_retries=0",
            "rollout.sandbox.command_timeout_s=10"]


async def _session(url, calls):
    params = StdioServerParameters(command=TERMINUS, args=_serve_args(url), env=dict(os.environ))
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                results = [await session.call_tool("run_subagent", args) for args in calls]
                return tools, results


def test_mcp_tool_runs_episode_and_leaves_dir_untouched(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("keep me\n")
    calls = [{"request": "Clean up and tell me what notes.txt says.", "workdir": str(repo)},
             {"request": "anything", "workdir": str(tmp_path / "missing")}]
    with ScriptedOpenAIServer(subagent_script, model="sub") as srv:
        tools, results = asyncio.run(asyncio.wait_for(_session(srv.base_url, calls), 120))
        requests = list(srv.requests)
    tool = next(t for t in tools.tools if t.name == "run_subagent")
    assert set(tool.input_schema["required"]) == {"request", "workdir"}
    ok, bad = results
    assert not ok.is_error
    text = ok.content[0].text
    assert "removed a.txt in the sandbox copy" in text and "success" in text
    # the episode really ran: the second model request saw the sandbox's output
    assert len(requests) == 2 and "junk" in requests[1]["messages"][-1]["content"]
    assert sorted(p.name for p in repo.iterdir()) == ["a.txt"] and (repo / "a.txt").read_text() == "keep me\n"
    assert bad.is_error and "not an existing absolute directory" in bad.content[0].text


def test_serve_refuses_unreachable_endpoint():
    url = f"http://127.0.0.1:{free_port()}/v1"
    r = subprocess.run([TERMINUS, *_serve_args(url)], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert "unreachable" in r.stderr and url in r.stderr


def test_mcp_with_tiny_model_on_vllm(tmp_path):
    """The trained-model path: an HF checkpoint served by in-process vLLM behind the MCP tool. vLLM's
    logs must not corrupt the stdio protocol; the untrained model's answer is whatever it is, but the
    episode runs and a result (report or the reason for none) comes back."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.txt").write_text("x\n")
    args = ["serve", "--subagent", "tiny", "rollout.episode.max_turns=2", "rollout.sampling.max_tokens_per_turn=24",
            "rollout.sampling.constrain=protocol", "rollout.sandbox.command_timeout_s=10"]

    async def go():
        params = StdioServerParameters(command=TERMINUS, args=args, env=dict(os.environ))
        with open(os.devnull, "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    return await session.call_tool("run_subagent", {"request": "Show a.txt", "workdir": str(repo)})
    res = asyncio.run(asyncio.wait_for(go(), 240))
    assert not res.is_error, res.content
    text = res.content[0].text
    assert text.startswith(("success", "failure", "error", "blocked")) or "no report" in text
    assert sorted(p.name for p in repo.iterdir()) == ["a.txt"]
