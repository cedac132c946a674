"""`terminus tasks validate`: replay a corpus's reference solutions through the episode path the
trainer uses (the scripted teacher in place of the engine: the commands really run in sandboxes
with each task's recorded environment, the observations are capped as in training) and check
that the recorded ground truth is reproduced:

  - the episode ends with a report, no sandbox, setup or timeout error;
  - each command exits as recorded;
  - every fact's evidence is in what the episode showed (a fact that cannot be seen cannot be earned);
  - the reference report, judged by the rules judge, is an exact report of that episode.

A corpus built on another machine or image fails here (a missing bind, a different toolchain, a
changed output) instead of silently training on rewards no episode can earn.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tasks.corpus import CorpusError, read_split
from tasks.groundtruth import missing_evidence
from tasks.store import SPLITS


@dataclass
class TaskCheck:
    task_id: str
    problems: list[str] = field(default_factory=list)
    unverified: int = 0     # facts recorded without evidence (an older corpus): checked only in the report

    @property
    def ok(self) -> bool:
        return not self.problems


def check_replay(task, traj) -> TaskCheck:
    """What a replayed reference solution (`traj`) says about `task`'s recorded ground truth."""
    from judge.rules import exact_facts, judge_rules, observed_text

    check = TaskCheck(task.id)
    if traj.error is not None:
        check.problems.append(f"the episode failed: {traj.error.strip()[:300]}")
        return check
    if traj.finish_reason != "report":
        check.problems.append(f"the episode ended with {traj.finish_reason!r}, not the reference report")
    codes = [t.exit_code for t in traj.turns if t.action == "command"]
    want = task.ground_truth.observed.get("exit_codes") or [task.ground_truth.exit_status]
    if codes[:len(want)] != list(want):
        check.problems.append(f"exit codes {codes} where the build recorded {list(want)}")
    seen = observed_text(traj)
    for f in task.ground_truth.facts:
        if not f.evidence:
            check.unverified += 1
        elif missing := missing_evidence(f, seen):
            check.problems.append(f"fact {f.value!r} is not reproduced: {missing} not in the output")
    if not check.problems and not exact_facts(task, traj):
        verdict = judge_rules(task, traj)
        unmet = [i.text for i in verdict.items if i.code is False]
        check.problems.append(f"the reference report is not an exact report of the replay: {unmet or 'status'}")
    return check


def sample_tasks(tasks: list, n: int, seed: int = 0) -> list:
    """n tasks drawn with a seed (all when n is 0 or at least the corpus)."""
    return tasks if not n or n >= len(tasks) else random.Random(seed).sample(tasks, n)


async def validate_tasks(tasks: list, sandbox_cfg, tokenizer, *, teacher_tasks: list | None = None,
                         max_turns: int = 10, concurrency: int = 4, progress=None) -> list[TaskCheck]:
    """Replay each task's reference through `rollout.worker.run_requests` and check it. The scripted
    teacher knows `teacher_tasks` (default: `tasks`), so tasks whose requests coincide must be told
    apart by what their commands print, as when it demonstrates them for SFT."""
    from rollout.teacher import ScriptedTeacher
    from rollout.config import RolloutConfig
    from rollout.worker import run_requests

    cfg = RolloutConfig(sandbox=sandbox_cfg)
    cfg.episode.max_turns = max_turns
    cfg.episode.episode_timeout_s = max(cfg.episode.episode_timeout_s, 2 * max_turns * sandbox_cfg.command_timeout_s)
    cfg.episode.max_context_tokens = 1 << 20   # the replay is not a model: no context limit applies
    teacher = ScriptedTeacher(teacher_tasks or tasks, tokenizer, max_turns)
    by_id = {t.id: t for t in tasks}
    checks: list[TaskCheck] = []

    def done(traj) -> None:
        checks.append(check_replay(by_id[traj.task_id], traj))
        if progress:
            progress(checks[-1], len(checks), len(tasks))

    await run_requests([(t, 1) for t in tasks], teacher, tokenizer, cfg, max_concurrent=concurrency, on_episode=done)
    order = {t.id: i for i, t in enumerate(tasks)}
    return sorted(checks, key=lambda c: order[c.task_id])


VALIDATE_SAMPLE = 16   # tasks of a freshly built corpus replayed through episodes before it is used


async def validate_sample(corpus_dir: Path, sandbox_cfg, n: int = VALIDATE_SAMPLE) -> None:
    """Replay n tasks' reference solutions through the episode path (validate_tasks); a corpus whose
    ground truth an episode does not reproduce is refused, never cached. The check a generated corpus
    passes before tasks.corpus caches it: `load_tasks(..., validate=validate_sample)`."""
    from core.model import resolve_model_path
    from rollout.worker import load_tokenizer

    tasks = [t for s in SPLITS for t in read_split(corpus_dir, s)]
    checks = await validate_tasks(sample_tasks(tasks, n), sandbox_cfg,
                                  load_tokenizer(str(resolve_model_path("tiny"))), teacher_tasks=tasks)
    if bad := [c for c in checks if not c.ok]:
        raise CorpusError(f"{len(bad)} of {len(checks)} tasks of the corpus built in {corpus_dir} do not reproduce "
                          f"their ground truth through an episode (first: {bad[0].task_id}: {bad[0].problems}); "
                          "this is a bug of the corpus builder, please report it")
