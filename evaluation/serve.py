"""`terminus serve`: the trained subagent as an MCP tool (stdio transport) for real coding agents.

Tool `run_subagent(request, workdir)`: one episode of the configured subagent on `request`, in a
sandbox whose repository is a copy-on-write view of `workdir` (the directory itself is never
modified), returning the subagent's report. The model endpoint is opened once, at startup, after
the same checks `eval` does (a missing checkpoint or unreachable endpoint stops the server before
it answers anything).
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path
from typing import Any

from evaluation.metrics import report_text

TOOL_NAME = "run_subagent"
TOOL_DESCRIPTION = ("Delegate terminal work in a repository (run tests, build, run a script, reproduce an error) to "
                    "a terminal subagent. It runs up to {max_turns} shell commands in a sandboxed copy of `workdir` "
                    "(your files are never modified) and returns a short report: status, summary, details.")


def format_result(traj: Any) -> str:
    """The tool's text: the report, or why there is none (the episode's error / finish reason)."""
    if traj.report is not None:
        return report_text(traj.report)
    reason = traj.error or f"the subagent ended without a report ({traj.finish_reason})"
    return f"error\nThe subagent produced no report: {reason.splitlines()[0] if reason else ''}"


def build_server(engine: Any, tokenizer: Any, rollout_cfg: Any):
    """An MCPServer with the one tool, bound to an open engine."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError  # its message reaches the client

    from rollout.episode import run_episode
    from tasks.types import Task

    server = MCPServer("terminus-subagent", instructions="A terminal-execution subagent; see run_subagent.")
    ids = itertools.count()

    @server.tool(name=TOOL_NAME, description=TOOL_DESCRIPTION.format(max_turns=rollout_cfg.episode.max_turns))
    async def run_subagent(request: str, workdir: str) -> str:
        path = Path(workdir).expanduser()
        if not request.strip():
            raise ToolError("request is empty: say what the subagent should run and report")
        if not path.is_absolute() or not path.is_dir():
            raise ToolError(f"workdir {workdir!r} is not an existing absolute directory")
        task = Task(id=f"mcp-{next(ids)}", language="", category="", project="", repo_dir=str(path), request=request)
        traj = await run_episode(task, engine, tokenizer, rollout_cfg)
        logging.getLogger(__name__).info("episode %s: %s, %d turns", task.id, traj.finish_reason, len(traj.turns))
        return format_result(traj)

    return server


def protect_stdout() -> None:
    """stdout carries the protocol: point fd 1 (what vLLM, its workers and stray prints write to) at
    stderr, and give the MCP transport a private handle on the real stdout."""
    os.environ["VLLM_LOGGING_STREAM"] = "ext://sys.stderr"
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(real, "w", buffering=1)


async def serve_stdio(cfg: Any, spec: Any) -> None:
    """Check the subagent, open it, and serve MCP on stdin/stdout until the client disconnects."""
    from evaluation.subagents import open_subagent, preflight

    protect_stdout()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    await preflight(spec, cfg)
    async with open_subagent(spec, cfg) as (engine, tokenizer):
        await build_server(engine, tokenizer, cfg.rollout).run_stdio_async()
