"""The one task loader above tasks/: what the training job and every command run on.

    load_task_list(cfg, split)              the run's tasks: a split of tasks.corpus (or a JSONL file)
    corpus_tasks("builtin" | DIR, split)    a split of a named corpus (`terminus tasks ...`)

Both end in tasks.load_tasks with the check only this layer can do: a generated corpus is
validated by replay (evaluation.validate.validate_sample) before it is cached.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import UserError


class TaskListError(UserError, ValueError):
    """No usable tasks; raised before any work starts."""


def corpus_tasks(corpus: Any, split: str, observation_cap: int = 0) -> list:
    """A split of a corpus: `corpus` is the tasks config section or a name ("builtin", "generated",
    a corpus directory); `observation_cap` refuses a corpus built for more output than episodes show."""
    from evaluation.validate import validate_sample
    from tasks import load_tasks
    return list(load_tasks(corpus, split, observation_cap=observation_cap, validate=validate_sample))


def load_task_list(cfg: Any, split: str, tasks_file: str = "", limit: int = 0) -> list:
    """The tasks to run, in a stable order: a split of tasks.corpus (checked against the episodes'
    output cap, rollout.sandbox.output_limit_bytes) or a JSONL file of Task records; TaskListError
    when there are none."""
    from tasks.types import Task
    if tasks_file:
        p = Path(tasks_file)
        if not p.is_file() and tasks_file in ("train", "validation", "test"):
            raise TaskListError(f"--tasks takes a JSONL file of Task records; for the {tasks_file} split "
                                f"of tasks.corpus use --split {tasks_file}")
        if not p.is_file():
            raise TaskListError(f"task file {tasks_file} not found: give a JSONL file of Task records "
                                f"(or --split for a split of tasks.corpus)")
        tasks = []
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    tasks.append(Task.from_dict(json.loads(line)))
                except (ValueError, TypeError, KeyError, AttributeError) as e:   # bad JSON, or JSON of another shape
                    raise TaskListError(f"{tasks_file}:{i}: not a Task record ({e})") from None
        where = tasks_file
    else:
        from tasks import CorpusError
        try:
            tasks = corpus_tasks(cfg.tasks, split, cfg.rollout.sandbox.output_limit_bytes)
        except CorpusError as e:
            raise TaskListError(str(e)) from None
        where = f"corpus {cfg.tasks.corpus!r}, split {split!r}"
    if limit:
        tasks = tasks[:limit]
    if not tasks:
        raise TaskListError(f"no tasks in {where}; pick another split (train, validation, test) or corpus")
    return tasks


def write_task_list(tasks: list, path: str | Path) -> None:
    Path(path).write_text("".join(t.to_json() + "\n" for t in tasks))
