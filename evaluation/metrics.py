"""Pure measurements of one judged episode, and their aggregation over a subagent's episodes.

Token counts use the subagent's tokenizer so figures are comparable across models that share one;
`compression` = tokens of command output the subagent read / tokens of the report it wrote.
"""
from __future__ import annotations

import re
import statistics
from collections import Counter
from typing import Any, Callable, Sequence

Counter_ = Callable[[str], int]


def report_text(report: dict[str, Any] | None) -> str:
    """The report as one string (status, summary, details), '' when there is none."""
    if not report:
        return ""
    return "\n".join(str(report.get(k) or "") for k in ("status", "summary", "details") if report.get(k))


def fact_hits(facts: Sequence[Any], text: str) -> list[bool]:
    """Per ground-truth fact: does `text` match all its patterns? Facts without patterns are skipped."""
    out = []
    for f in facts:
        patterns = getattr(f, "patterns", None) or (f.get("patterns") if isinstance(f, dict) else None)
        if not patterns:
            continue
        out.append(all(re.search(p, text, re.IGNORECASE | re.MULTILINE) for p in patterns))
    return out


def fact_accuracy(task: Any, report: dict[str, Any] | None) -> float | None:
    """Fraction of the task's checkable facts the report states; None when the task has none."""
    hits = fact_hits(task.ground_truth.facts, report_text(report))
    if not hits:
        return None
    return sum(hits) / len(hits)


def observation_texts(traj: Any) -> list[str]:
    """What the subagent read: the observation messages sent back after its commands."""
    return [t.observation for t in traj.turns if t.action == "command" and t.observation]


def episode_row(task: Any, traj: Any, verdict: dict[str, Any] | None, count_tokens: Counter_) -> dict[str, Any]:
    """One episode's numbers. A failed episode keeps its row (error set) so it is counted, not dropped."""
    read = sum(count_tokens(o) for o in observation_texts(traj))
    report_tokens = count_tokens(report_text(traj.report)) if traj.report else 0
    verdict = verdict or {}
    return {
        "task_id": task.id,
        "category": getattr(task, "category", ""),
        "error": traj.error,
        "finish_reason": traj.finish_reason,
        "has_report": traj.report is not None,
        "turns": len(traj.turns),
        "commands": sum(t.action == "command" for t in traj.turns),
        "format_errors": traj.format_errors,
        "report_tokens": report_tokens,
        "output_tokens_read": read,
        "compression": (read / report_tokens) if report_tokens else None,
        "latency_s": float(traj.metadata.get("wall_s", 0.0)),
        "fact_accuracy": fact_accuracy(task, traj.report),
        "score": verdict.get("score"),
        "dimensions": dict(verdict.get("dimensions") or {}),
        "failure_modes": list(verdict.get("failure_modes") or []),
        "judge_error": verdict.get("error"),
    }


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over a subagent's episodes. Failed episodes count in `episodes`/`failed` and score 0 in
    `score` (a crash is not a free pass), but are left out of per-episode shape metrics."""
    n = len(rows)
    ok = [r for r in rows if not r["error"]]
    dims = sorted({d for r in rows for d in r["dimensions"]})
    modes = Counter(m for r in rows for m in r["failure_modes"])
    return {
        "episodes": n,
        "failed": n - len(ok),
        "failures": [{"task_id": r["task_id"], "error": (r["error"] or "")[:200]} for r in rows if r["error"]],
        "score": _mean([0.0 if r["error"] else r["score"] for r in rows]),
        "dimensions": {d: _mean([r["dimensions"].get(d) for r in ok]) for d in dims},
        "failure_mode_rates": {m: c / n for m, c in sorted(modes.items())} if n else {},
        "fact_accuracy": _mean([0.0 if r["error"] else r["fact_accuracy"] for r in rows]),
        "report_rate": (sum(r["has_report"] for r in rows) / n) if n else None,
        "turns": _mean([r["turns"] for r in ok]),
        "report_tokens": _mean([r["report_tokens"] for r in ok if r["has_report"]]),
        "output_tokens_read": _mean([r["output_tokens_read"] for r in ok]),
        "compression": _mean([r["compression"] for r in ok]),
        "latency_s": _mean([r["latency_s"] for r in ok]),
    }
