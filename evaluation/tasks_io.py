"""Task lists for eval/distill/study: a corpus split (tasks.load_tasks) or a JSONL file of Task records."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import UserError


class TaskListError(UserError, ValueError):
    """No usable tasks; raised before any work starts."""


def load_task_list(cfg: Any, split: str, tasks_file: str = "", limit: int = 0) -> list:
    """The tasks to run, in a stable order; TaskListError when there are none."""
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
        from evaluation.validate import validate_sample
        from tasks import CorpusError, load_tasks
        try:
            tasks = list(load_tasks(cfg.tasks, split, validate=validate_sample))
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
