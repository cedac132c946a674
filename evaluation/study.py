"""The main-agent study: does delegating terminal work to the subagent save the main agent tokens?

A main agent (any OpenAI-compatible model with tool calling) works on each repository task twice:
with tools {terminal} and with {terminal, delegate_to_subagent}. Per run we record the main
agent's input/output tokens (the endpoint's `usage`), the terminal commands it ran itself, the
delegations, whether its later messages used the subagent's report, and success by the task's own
check. The main agent's terminal is a sandbox over the task's repository; each delegation is a real
subagent episode in its own copy-on-write sandbox over the same repository.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from evaluation.metrics import report_text

TERMINAL = "terminal"
DELEGATE = "delegate_to_subagent"
CONDITIONS = ("terminal", "delegate")

TOOLS = {
    TERMINAL: {"type": "function", "function": {
        "name": TERMINAL, "description": "Run ONE shell command in the repository and get its exit code and output.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
    DELEGATE: {"type": "function", "function": {
        "name": DELEGATE,
        "description": "Delegate terminal work (run tests, build, reproduce an error) to a subagent that runs the "
                       "commands itself and returns a short report with the facts you need.",
        "parameters": {"type": "object", "properties": {"request": {"type": "string"}}, "required": ["request"]}}},
}

MAIN_SYSTEM = ("You are a coding agent working in a repository at {workdir}. Use the tools to find out what "
               "you need, then answer the task in plain text (no tool call) to finish.")

# (request, repo_dir) -> the subagent's trajectory
SubagentRunner = Callable[[str, str], Awaitable[Any]]


@dataclass
class StudyTask:
    id: str
    repo_dir: str
    instruction: str
    check: str = ""                      # shell command run in the main agent's sandbox at the end; 0 = success
    answer_patterns: list[str] = field(default_factory=list)   # regexes the final answer must all match

    @staticmethod
    def from_task(task: Any) -> "StudyTask":
        """A corpus task as a study task: success = the final answer states every checkable fact."""
        patterns = [p for f in task.ground_truth.facts for p in f.patterns]
        return StudyTask(task.id, task.repo_dir, task.request, answer_patterns=patterns)


@dataclass
class StudyResult:
    task_id: str
    condition: str
    success: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    steps: int = 0
    own_commands: int = 0
    delegations: int = 0
    used_report: bool = False
    subagent_turns: int = 0
    subagent_failures: int = 0
    final_answer: str = ""
    error: str | None = None
    wall_s: float = 0.0


def salient_tokens(text: str) -> set[str]:
    """Tokens specific enough that seeing them again means the text was used: names with digits,
    underscores, dots, colons or slashes (test names, file:line, counts), and long words."""
    toks = re.findall(r"[\w][\w./:-]*[\w]", text)
    return {t for t in toks if (len(t) >= 3 and re.search(r"[\d_.:/]", t)) or len(t) >= 10}


def report_used(report: str, later: str) -> bool:
    return bool(salient_tokens(report) & salient_tokens(later))


def _tool_message(call_id: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def format_report_for_main(traj: Any) -> str:
    if traj.error or traj.report is None:
        return f"The subagent failed ({traj.error or traj.finish_reason}); no report."
    return report_text(traj.report)


async def run_main_agent(task: StudyTask, condition: str, client: Any, sandbox_cfg: Any,
                         subagent: SubagentRunner | None, max_steps: int = 12, max_tokens: int = 1024) -> StudyResult:
    """One main-agent run; endpoint or sandbox failures mark the result (error) instead of raising."""
    from sandbox import open_sandbox
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {CONDITIONS}, not {condition!r}")
    res = StudyResult(task.id, condition)
    tools = [TOOLS[TERMINAL]] + ([TOOLS[DELEGATE]] if condition == "delegate" else [])
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": MAIN_SYSTEM.format(workdir=sandbox_cfg.workdir)},
        {"role": "user", "content": task.instruction}]
    reports: list[str] = []
    later_text: list[str] = []   # what the main agent wrote after its first report arrived
    started = time.monotonic()
    try:
        async with await open_sandbox(sandbox_cfg, task.repo_dir) as sb:
            for _ in range(max_steps):
                resp = await client.chat(messages, tools=tools, max_tokens=max_tokens)
                if resp.usage is not None:
                    res.input_tokens += resp.usage.prompt_tokens
                    res.output_tokens += resp.usage.completion_tokens
                res.steps += 1
                msg = resp.choices[0].message
                content = msg.content or ""
                calls = [c.model_dump() for c in msg.tool_calls or []]
                if reports:
                    later_text.append(content + " " + " ".join(c["function"].get("arguments", "") for c in calls))
                messages.append({"role": "assistant", "content": content,
                                 **({"tool_calls": calls} if calls else {})})
                if not calls:
                    res.final_answer = content
                    break
                for call in calls:
                    name = call["function"]["name"]
                    try:
                        args = json.loads(call["function"].get("arguments") or "{}")
                    except json.JSONDecodeError as e:
                        messages.append(_tool_message(call["id"], f"error: arguments are not JSON ({e})"))
                        continue
                    if name == TERMINAL and "command" in args:
                        res.own_commands += 1
                        r = await sb.run(str(args["command"]), timeout_s=sandbox_cfg.command_timeout_s)
                        messages.append(_tool_message(call["id"], f"exit code: {r.exit_code}\n{r.output}"))
                    elif name == DELEGATE and condition == "delegate" and subagent and "request" in args:
                        res.delegations += 1
                        traj = await subagent(str(args["request"]), task.repo_dir)
                        res.subagent_turns += len(traj.turns)
                        res.subagent_failures += traj.error is not None
                        text = format_report_for_main(traj)
                        if traj.report is not None:
                            reports.append(text)
                        messages.append(_tool_message(call["id"], text))
                    else:
                        messages.append(_tool_message(call["id"], f"error: unknown tool or missing argument: {name}"))
            else:
                res.error = f"no final answer within {max_steps} steps"
            res.used_report = any(report_used(r, " ".join(later_text)) for r in reports)
            res.success = res.error is None and await _check(task, sb, res.final_answer, sandbox_cfg)
    except Exception as e:  # the endpoint or the sandbox failed: this run is marked, the study goes on
        res.error = f"{type(e).__name__}: {e}"
    res.wall_s = round(time.monotonic() - started, 3)
    return res


async def _check(task: StudyTask, sb: Any, answer: str, sandbox_cfg: Any) -> bool:
    ok = all(re.search(p, answer, re.IGNORECASE | re.MULTILINE) for p in task.answer_patterns)
    if ok and task.check:
        ok = (await sb.run(task.check, timeout_s=sandbox_cfg.command_timeout_s)).exit_code == 0
    return ok


def episode_subagent(engine: Any, tokenizer: Any, rollout_cfg: Any) -> SubagentRunner:
    """A delegation = one real episode of the subagent on the request, in its own sandbox."""
    from rollout.episode import run_episode
    from tasks.types import Task
    counter = iter(range(1 << 30))

    async def run(request: str, repo_dir: str):
        task = Task(id=f"delegation-{next(counter)}", language="", category="", project="", repo_dir=repo_dir,
                    request=request)
        return await run_episode(task, engine, tokenizer, rollout_cfg)
    return run


async def run_study(tasks: Sequence[StudyTask], client: Any, sandbox_cfg: Any, subagent: SubagentRunner,
                    conditions: Sequence[str] = CONDITIONS, max_steps: int = 12,
                    on_result: Callable[[StudyResult], None] | None = None) -> list[StudyResult]:
    """Each task under each condition, sequentially (the main agent's order of calls matters)."""
    out = []
    for task in tasks:
        for cond in conditions:
            r = await run_main_agent(task, cond, client, sandbox_cfg, subagent if cond == "delegate" else None,
                                     max_steps=max_steps)
            out.append(r)
            if on_result:
                on_result(r)
    return out


def summarize(results: Sequence[StudyResult]) -> dict[str, dict[str, Any]]:
    out = {}
    for cond in CONDITIONS:
        rs = [r for r in results if r.condition == cond]
        if not rs:
            continue
        n = len(rs)
        delegated = [r for r in rs if r.delegations]
        out[cond] = {
            "runs": n, "errors": sum(r.error is not None for r in rs),
            "success_rate": sum(r.success for r in rs) / n,
            "input_tokens": sum(r.input_tokens for r in rs) / n,
            "output_tokens": sum(r.output_tokens for r in rs) / n,
            "own_commands": sum(r.own_commands for r in rs) / n,
            "delegations": sum(r.delegations for r in rs) / n,
            "report_used_rate": (sum(r.used_report for r in delegated) / len(delegated)) if delegated else None,
            "subagent_turns": sum(r.subagent_turns for r in rs) / n,
        }
    return out


def study_table(summary: dict[str, dict[str, Any]]) -> str:
    """The with/without markdown table."""
    cols = [("runs", "runs"), ("errors", "errors"), ("success_rate", "success"), ("input_tokens", "main in tok"),
            ("output_tokens", "main out tok"), ("own_commands", "own cmds"), ("delegations", "delegations"),
            ("report_used_rate", "report used"), ("subagent_turns", "subagent turns")]
    names = {"terminal": "{terminal}", "delegate": "{terminal, delegate_to_subagent}"}
    lines = ["| tools | " + " | ".join(c[1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for cond, s in summary.items():
        lines.append(f"| {names[cond]} | " + " | ".join(_fmt(s[k]) for k, _ in cols) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def results_json(results: Sequence[StudyResult]) -> dict[str, Any]:
    return {"summary": summarize(results), "runs": [asdict(r) for r in results]}
