"""The scripted expert teacher: a programmatic policy that replays each built-in task's reference
solution (its commands, then its report), behind the same engine seam as vLLM or a frontier API.

Because it is an engine, SFT demonstrations come from the ordinary episode loop: the commands
really run in a sandbox, the observations are real, and the trajectory is tokenized exactly as a
model's would be. It speaks the `chat` flavour of the seam (it reads the message list, like the
OpenAI chat engine), so it needs no tokenizer tricks to know where in the episode it is.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import re
from pathlib import Path
from typing import Any, Iterable

from rollout.engine.base import EngineError, FixedWeights, Generation, Sampling
from core.protocol import parse_observation, parse_report
from rollout.io import write_trajectories


def report_text(report: str) -> str:
    """A reference report as one protocol turn, whether it is stored whole or as its body."""
    r = report.strip()
    if r.startswith("<report>"):
        return r
    if "<status>" in r:
        return f"<report>{r}{'' if '<details>' in r else '<details></details>'}</report>"
    return f"<report><status>success</status><summary>{r}</summary><details></details></report>"


def terse_report(task: Any, command: str) -> str:
    """A right but incomplete report of a task: its status, the outcome of the last command run and the
    exit status, none of the details (failing names, errors, values) the main agent would need."""
    code = task.ground_truth.exit_status
    fields, _ = parse_report(report_text(task.reference.report))   # the status as the protocol reads it
    status = fields["status"] if fields else ("success" if code == 0 else "failure")
    outcome = f"`{command}` succeeds" if code == 0 else f"`{command}` fails (exit {code})"
    return (f"<report><status>{status}</status><summary>{outcome}.</summary>"
            f"<details>Exit status {code}.</details></report>")


def is_terse(task: Any, fraction: float, seed: int) -> bool:
    """Whether the scripted teacher gives this task the terse report: a seeded hash of its request and
    reference report, so the choice is the same across runs, resumes and processes, and tasks that the
    teacher cannot tell apart (one request, the same outputs, the same report) get the same play."""
    key = f"{seed}:terse:{task.request}:{task.reference.report}"
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16 ** 8 < fraction


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


def observations_in(messages: list[dict[str, str]]) -> list[tuple[int, str]]:
    """(exit code, output) of every command the episode ran so far, read back from its messages."""
    parsed = (parse_observation(m["content"]) for m in messages if m["role"] == "user")
    return [o for o in parsed if o is not None]


class ScriptedTeacher(FixedWeights):
    """Engine whose turn k for a task is reference.commands[k], then the reference report (or, for a
    `terse_fraction` of the tasks, `terse_report`: a teacher whose reports lack the details).

    At most max_turns - 1 commands are played so the report always fits the turn cap. Several tasks
    may share a request (variants of one project: "run the tests" on differently broken copies), so
    the teacher tells them apart like an expert would, by what the commands printed: the candidate
    whose recorded exit codes match and whose recorded outputs are closest to the observed ones.
    A request it has no reference for, or observations that fit two candidates whose next plays
    differ, is an EngineError (the episode is marked failed, not faked).
    """

    api = "chat"

    def __init__(self, tasks: Iterable[Any], tokenizer: Any, max_turns: int, policy_version: int = 0,
                 terse_fraction: float = 0.0, seed: int = 0):
        self.tokenizer = tokenizer
        self.max_turns = max_turns
        self.policy_version = policy_version
        self.terse_fraction, self.seed = terse_fraction, seed
        self.by_request: dict[str, list[Any]] = {}
        for t in tasks:
            if t.reference is not None:
                self.by_request.setdefault(t.request.strip(), []).append(t)

    def _play(self, task: Any, k: int) -> str:
        commands = list(task.reference.commands)[: max(0, self.max_turns - 1)]
        if k < len(commands):
            return f"<command>{commands[k]}</command>"
        if commands and task.ground_truth is not None and is_terse(task, self.terse_fraction, self.seed):
            return terse_report(task, commands[-1])
        return report_text(task.reference.report)

    def _candidates(self, messages: list[dict[str, str]]) -> list[Any]:
        first_user = next((m["content"] for m in messages if m["role"] == "user"), "").strip()
        # The longest matching request, so one request that prefixes another cannot capture it.
        matching = [r for r in self.by_request if first_user.startswith(r)]
        if not matching:
            raise EngineError(f"scripted teacher: no reference solution for request {first_user[:80]!r}")
        return self.by_request[max(matching, key=len)]

    def turn_text(self, messages: list[dict[str, str]]) -> str:
        candidates = self._candidates(messages)
        k = sum(1 for m in messages if m["role"] == "assistant")
        plays = [self._play(t, k) for t in candidates]
        if len(set(plays)) == 1:
            return plays[0]
        seen = observations_in(messages)
        # A cheap word-overlap score shortlists the candidates; the exact (quadratic) likeness ranks the few
        # left, so a corpus with hundreds of projects per request stays fast.
        shortlist = sorted(range(len(candidates)), key=lambda i: _fit(candidates[i], seen, quick=True),
                           reverse=True)[:4]
        (best, i), (runner_up, j) = sorted(((_fit(candidates[i], seen), i) for i in shortlist), reverse=True)[:2]
        if best == runner_up and plays[i] != plays[j]:
            raise EngineError(f"scripted teacher: the observations fit tasks {candidates[i].id} and "
                              f"{candidates[j].id} equally; cannot tell which reference to follow")
        return plays[i]

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


def _fit(task: Any, seen: list[tuple[int, str]], quick: bool = False) -> tuple[int, float]:
    """How well a task's recorded runs explain the observed ones: (exit codes matched, output likeness);
    `quick`: likeness as the overlap of the outputs' word sets (linear, for shortlisting)."""
    recorded = (task.ground_truth.observed if task.ground_truth else {}) or {}
    codes, outputs = recorded.get("exit_codes", []), recorded.get("outputs", [])
    matched = sum(1 for (code, _), want in zip(seen, codes) if code == want)
    pairs = [(_stable(out), _stable(want)) for (_, out), want in zip(seen, outputs)]
    if quick:
        likeness = sum(len(set(out.split()) & set(want.split())) / max(1, len(set(out.split()) | set(want.split())))
                       for out, want in pairs)
    else:   # head and tail: a long test run's failures and totals are at its end
        likeness = sum(difflib.SequenceMatcher(None, _ends(out), _ends(want), autojunk=False).ratio() for out, want in pairs)
    return matched, likeness


_TIMING = re.compile(r"\d+(?:\.\d+)?\s*(?:ms|s|sec|seconds)\b|\d+\.\d+")


def _stable(text: str) -> str:
    """An output without what differs between two runs of the same command (timings, durations)."""
    return _TIMING.sub("#", text)


def _ends(text: str, n: int = 3000) -> str:
    return text if len(text) <= 2 * n else text[:n] + text[-n:]


async def collect_demos(cfg, tasks: list, pool, tokenizer, out: Path) -> tuple[list, dict]:
    """SFT demonstrations: the scripted teacher plays each given task once in real sandboxes, through
    `pool` (a cluster.rollout_pool.RolloutPool: set_engine, run).

    Failed episodes (error set or no report) are kept in the file, marked, and counted, but not
    trained on.
    """
    terse = cfg.trainer.sft.teacher.terse_fraction
    pool.set_engine(ScriptedTeacher(tasks, tokenizer, max_turns=cfg.rollout.episode.max_turns,
                                    terse_fraction=terse, seed=cfg.seed))
    groups, metrics = await pool.run([(t, 1) for t in tasks if t.reference is not None], seed=cfg.seed)
    demos = [t for g in groups for t in g]
    write_trajectories(out, demos)
    good = [t for t in demos if t.error is None and t.finish_reason == "report"]
    by_id = {t.id: t for t in tasks}
    metrics.update(demos_total=len(demos), demos_failed=len(demos) - len(good),
                   demos_terse=sum(1 for t in good if is_terse(by_id[t.task_id], terse, cfg.seed)))
    return good, metrics


def load_demos(path: str | Path, tokenizer) -> tuple[list, dict]:
    """SFT demonstrations from a trajectory file (`trainer.sft.data`: what `terminus distill` writes, a
    frontier teacher's episodes, provenance in metadata) instead of the scripted teacher's. Episodes
    without a report or with an error are counted, not trained on. Token ids must be the student's:
    the episode loop tokenizes with the configured model, so distill with the same `model.path`."""
    from core.errors import UserError
    from rollout.io import read_trajectories

    demos = read_trajectories(path)
    vocab = len(tokenizer)
    foreign = [t.task_id for t in demos if t.token_ids and max(t.token_ids) >= vocab]
    if foreign:
        raise UserError(f"trainer.sft.data={path}: {len(foreign)} trajectories (e.g. {foreign[0]}) hold token ids "
                        f"beyond the student's vocabulary ({vocab}): they were tokenized for another model; "
                        f"run `terminus distill` with the student's model.path")
    good = [t for t in demos if t.error is None and t.finish_reason == "report" and t.token_ids]
    return good, {"demos_total": len(demos), "demos_failed": len(demos) - len(good)}
