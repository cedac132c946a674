"""Writing a task corpus directory (its layout: tasks.corpus), for every corpus builder."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tasks.types import Task

SPLITS = ("train", "validation", "test")


def write_corpus(out: Path, tasks: list[Task], source: str, extra: dict | None = None) -> None:
    """Write the split files, the summary (plus `extra` keys) and, last, the COMPLETE marker."""
    by_split: dict[str, list[Task]] = {s: [] for s in SPLITS}
    for t in tasks:
        by_split.setdefault(t.split, []).append(t)
    for split, items in by_split.items():
        lines = [t.to_json() for t in sorted(items, key=lambda t: t.id)]
        (out / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))
    summary = summarize(tasks) | {"source": source} | (extra or {})
    (out / "corpus.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    (out / "COMPLETE").write_text("")


def summarize(tasks: list[Task]) -> dict:
    return {"tasks": len(tasks), "projects": len({t.project for t in tasks}),
            "by_split": dict(Counter(t.split for t in tasks)),
            "by_language": dict(Counter(t.language for t in tasks)),
            "by_category": dict(Counter(t.category for t in tasks)),
            "projects_by_split": {s: sorted({t.project for t in tasks if t.split == s}) for s in SPLITS}}
