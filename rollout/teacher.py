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


def misstated_report(task: Any) -> str | None:
    """The reference report with one number misread (a count, a printed value, a line number: n -> n + 1),
    as a teacher that reads a long log carelessly writes it; None when the report has no number that a
    ground-truth fact checks (a clean build, an error message without a line). Only a change that the
    task's own facts catch is made (a fact's pattern no longer matches, or a contradiction does), so the
    report is wrong by the same checks that judge the policy; the exit status is never the one changed."""
    fields, _ = parse_report(report_text(task.reference.report))
    if fields is None or task.ground_truth is None:
        return None
    facts = [f for f in task.ground_truth.facts if f.kind != "exit_status"]

    def wrong(text: str) -> bool:   # by the checks that judge a report (judge.rules: task_items, misstated_facts)
        return any(f.stated_in(text) is False or f.misstatements_in(text) for f in facts)

    for name in ("details", "summary"):   # details first: the counts and values; the summary leads with the outcome
        for m in reversed(list(re.finditer(r"(?<![\w.])\d+(?!\w|\.\d)", fields[name]))):
            changed = dict(fields, **{name: f"{fields[name][:m.start()]}{int(m.group()) + 1}{fields[name][m.end():]}"})
            if wrong(f"{changed['summary']}\n{changed['details']}"):
                return (f"<report><status>{changed['status']}</status><summary>{changed['summary']}</summary>"
                        f"<details>{changed['details']}</details></report>")
    return None


def malformed_report(report: str) -> str:
    """A report the protocol rejects the way it rejects a student's slip: the summary cut in half and
    never closed, the details gone (`report without <summary>...</summary>`)."""
    fields, _ = parse_report(report_text(report))
    summary = fields["summary"] if fields else report
    return f"<report><status>{fields['status'] if fields else 'failure'}</status><summary>{summary[: len(summary) // 2]}</report>"


def is_flawed(task: Any, flaw: str, fraction: float, seed: int) -> bool:
    """Whether the scripted teacher gives this task the report with `flaw` ("terse", "misstated"): a seeded
    hash of its request and reference report, so the choice is the same across runs, resumes and processes,
    and tasks that the teacher cannot tell apart (one request, the same outputs, the same report) get the
    same play."""
    key = f"{seed}:{flaw}:{task.request}:{task.reference.report}"
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
    `terse_fraction` of the tasks, `terse_report`: a teacher whose reports lack the details; for a
    `misstate_fraction`, `misstated_report`: a teacher that misreads a number). For a `retry_fraction`
    of the tasks whose commands leave a turn to spare, the first report is `malformed_report`, which the
    protocol rejects, and the next turn the report again: a demonstration of recovering from a format error.

    At most max_turns - 1 commands are played so the report always fits the turn cap. Several tasks
    may share a request (variants of one project: "run the tests" on differently broken copies), so
    the teacher tells them apart like an expert would, by what the commands printed: the candidate
    whose recorded exit codes match and whose recorded outputs are closest to the observed ones.
    A request it has no reference for, or observations that fit two candidates whose next plays
    differ, is an EngineError (the episode is marked failed, not faked).
    """

    api = "chat"

    def __init__(self, tasks: Iterable[Any], tokenizer: Any, max_turns: int, policy_version: int = 0,
                 terse_fraction: float = 0.0, misstate_fraction: float = 0.0, retry_fraction: float = 0.0,
                 seed: int = 0):
        self.tokenizer = tokenizer
        self.max_turns = max_turns
        self.policy_version = policy_version
        self.terse_fraction, self.misstate_fraction, self.seed = terse_fraction, misstate_fraction, seed
        self.retry_fraction = retry_fraction
        self.by_request: dict[str, list[Any]] = {}
        for t in tasks:
            if t.reference is not None:
                self.by_request.setdefault(t.request.strip(), []).append(t)

    def _play(self, task: Any, k: int) -> str:
        commands = list(task.reference.commands)[: max(0, self.max_turns - 1)]
        if k < len(commands):
            return f"<command>{commands[k]}</command>"
        if k == len(commands) and self.retries(task):
            return malformed_report(task.reference.report)
        flaw = self.flaw(task) if commands else None
        if flaw == "terse":
            return terse_report(task, commands[-1])
        if flaw == "misstated":
            return misstated_report(task)
        return report_text(task.reference.report)

    def retries(self, task: Any) -> bool:
        """Whether the teacher's first report for this task is a malformed one, written again next turn."""
        return (len(task.reference.commands) + 2 <= self.max_turns
                and is_flawed(task, "retry", self.retry_fraction, self.seed))

    def flaw(self, task: Any) -> str | None:
        """Which flawed report the teacher gives this task, if any ("terse" before "misstated")."""
        if task.ground_truth is None:
            return None
        if is_flawed(task, "terse", self.terse_fraction, self.seed):
            return "terse"
        if is_flawed(task, "misstated", self.misstate_fraction, self.seed) and misstated_report(task):
            return "misstated"
        return None

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
    flaws = cfg.trainer.sft.teacher
    teacher = ScriptedTeacher(tasks, tokenizer, max_turns=cfg.rollout.episode.max_turns, seed=cfg.seed,
                              terse_fraction=flaws.terse_fraction, misstate_fraction=flaws.misstate_fraction,
                              retry_fraction=flaws.retry_fraction)
    pool.set_engine(teacher)
    groups, metrics = await pool.run([(t, 1) for t in tasks if t.reference is not None], seed=cfg.seed)
    demos = [t for g in groups for t in g]
    write_trajectories(out, demos)
    good = [t for t in demos if t.error is None and t.finish_reason == "report"]
    by_id = {t.id: t for t in tasks}
    plays = [teacher.flaw(by_id[t.task_id]) for t in good]
    metrics.update(demos_total=len(demos), demos_failed=len(demos) - len(good),
                   demos_terse=plays.count("terse"), demos_misstated=plays.count("misstated"),
                   demos_retried=sum(t.format_errors > 0 for t in good))
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
