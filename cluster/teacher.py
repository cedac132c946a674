"""The scripted expert teacher: a programmatic policy that replays each built-in task's reference
solution (its commands, then its report), behind the same engine seam as vLLM or a frontier API.

Because it is an engine, SFT demonstrations come from the ordinary episode loop: the commands
really run in a sandbox, the observations are real, and the trajectory is tokenized exactly as a
model's would be. It speaks the `chat` flavour of the seam (it reads the message list, like the
OpenAI chat engine), so it needs no tokenizer tricks to know where in the episode it is.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable

from rollout.engine.base import EngineError, Generation, Sampling


def report_text(report: str) -> str:
    """A reference report as one protocol turn, whether it is stored whole or as its body."""
    r = report.strip()
    if r.startswith("<report>"):
        return r
    if "<status>" in r:
        return f"<report>{r}{'' if '<details>' in r else '<details></details>'}</report>"
    return f"<report><status>success</status><summary>{r}</summary><details></details></report>"


def choose_demo_tasks(tasks: list, fraction: float, seed: int) -> tuple[list, list]:
    """(demonstrated, undemonstrated): in each project, ceil(fraction * its tasks) are demonstrated.

    The choice is a seeded hash of the task id, so it is stable across runs and resumes, and every
    project keeps at least one demonstration. Holding tasks out of SFT gives GRPO tasks whose
    outputs the policy has never been shown a report for, which is what a held-out project is too.
    """
    by_project: dict[str, list] = {}
    for t in tasks:
        by_project.setdefault(t.project, []).append(t)
    chosen: set[str] = set()
    for group in by_project.values():
        ranked = sorted(group, key=lambda t: hashlib.sha256(f"{seed}:{t.id}".encode()).hexdigest())
        chosen.update(t.id for t in ranked[: math.ceil(fraction * len(group))])
    return [t for t in tasks if t.id in chosen], [t for t in tasks if t.id not in chosen]


class ScriptedTeacher:
    """Engine whose turn k for a task is reference.commands[k], then the reference report.

    At most max_turns - 1 commands are played so the report always fits the turn cap. A request it
    has no reference for is an EngineError (the episode is marked failed, not faked).
    """

    api = "chat"

    def __init__(self, tasks: Iterable[Any], tokenizer: Any, max_turns: int, policy_version: int = 0):
        self.tokenizer = tokenizer
        self.max_turns = max_turns
        self.policy_version = policy_version
        self.by_request: dict[str, Any] = {}
        for t in tasks:
            if t.reference is not None:
                self.by_request[t.request.strip()] = t

    def _task_of(self, messages: list[dict[str, str]]) -> Any:
        first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
        for request, task in self.by_request.items():
            if first_user.strip().startswith(request):
                return task
        raise EngineError(f"scripted teacher: no reference solution for request {first_user[:80]!r}")

    def turn_text(self, messages: list[dict[str, str]]) -> str:
        task = self._task_of(messages)
        k = sum(1 for m in messages if m["role"] == "assistant")
        commands = list(task.reference.commands)[: max(0, self.max_turns - 1)]
        if k < len(commands):
            return f"<command>{commands[k]}</command>"
        return report_text(task.reference.report)

    async def generate(self, prompt_ids: list[int], sampling: Sampling, messages: list[dict[str, str]] | None = None
                       ) -> Generation:
        if messages is None:
            raise EngineError("scripted teacher needs the message list (engine api 'chat')")
        text = self.turn_text(messages)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        stop = next((s for s in sampling.stop if text.endswith(s)), None)
        # A deterministic expert: every token has probability 1.
        return Generation(token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop", stop_reason=stop,
                          policy_version=self.policy_version)
