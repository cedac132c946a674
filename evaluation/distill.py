"""`terminus distill`: SFT data from a teacher subagent, the paper's way.

For each training task: run the teacher (`samples` episodes), judge every trajectory, keep those
scoring >= threshold with no episode error, drop duplicates (same task, same commands, same report),
and append them to the output JSONL with provenance:

    {"trajectory": {...Trajectory...}, "provenance": {"teacher": ..., "judge": ..., "verdict": {...},
     "task": {"id", "category", "project", "split", "language"}, "created": ...}}

Resumable: `<out>.progress.jsonl` records every finished task (kept or not, with counts); a rerun
skips those tasks. Rate limits are the teacher endpoint's (rollout.engine.requests_per_minute,
tokens_per_minute). Failed episodes are counted per task and in the summary, never written as data.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

from evaluation.judging import open_judge
from evaluation.subagents import SubagentSpec, open_subagent, preflight


def dedup_key(traj: Any) -> str:
    """Two trajectories are duplicates when they ran the same commands and wrote the same report."""
    commands = [t.command for t in traj.turns if t.action == "command"]
    blob = json.dumps([traj.task_id, commands, traj.report], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_progress(out: Path) -> tuple[set[str], set[str]]:
    """(task ids already finished, dedup keys already written)."""
    done, keys = set(), set()
    prog = progress_path(out)
    if prog.exists():
        for line in prog.read_text().splitlines():
            if line.strip():
                try:
                    done.add(json.loads(line)["task_id"])
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a crash: that task simply runs again
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                try:
                    keys.add(json.loads(line)["provenance"]["dedup_key"])
                except (json.JSONDecodeError, KeyError):
                    continue
    return done, keys


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.jsonl")


async def distill(cfg: Any, teacher: SubagentSpec, tasks: Sequence[Any], out_path: str | Path, *,
                  threshold: float = 0.7, samples: int = 1, concurrency: int = 4,
                  show_progress: bool = True) -> dict[str, Any]:
    """Run, judge, filter, dedupe, append. Returns counts (also for the resumed part)."""
    from rollout.episode import run_episode
    from rollout.tokens import ChatFormat

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    await preflight(teacher, cfg)
    done, keys = read_progress(out)
    todo = [t for t in tasks if t.id not in done]
    stats = {"tasks": len(tasks), "skipped_done": len(tasks) - len(todo), "episodes": 0, "episode_errors": 0,
             "judge_errors": 0, "below_threshold": 0, "duplicates": 0, "kept": 0, "failed_tasks": []}
    if not todo:
        return stats
    judge, close_judge = open_judge(cfg, run_dir=str(out.parent))
    bar = _progress(len(todo), teacher.label) if show_progress else None
    lock = asyncio.Lock()
    gate = asyncio.Semaphore(concurrency)
    try:
        async with open_subagent(teacher, cfg, tasks=list(tasks)) as (engine, tokenizer):
            fmt = ChatFormat.of(tokenizer)

            async def one(task):
                async with gate:
                    trajs = await asyncio.gather(*(
                        run_episode(task, engine, tokenizer, cfg.rollout, fmt=fmt, group_id=task.id,
                                    seed=None if cfg.seed is None else cfg.seed + k,
                                    max_model_len=cfg.model.max_model_len) for k in range(samples)))
                    verdicts = await asyncio.gather(*(judge(task, tr) for tr in trajs))
                async with lock:  # one writer: lines never interleave, progress follows the data
                    _record(task, trajs, verdicts, teacher, cfg, threshold, keys, stats, out)
                    if bar:
                        bar.update(1)
            await asyncio.gather(*(one(t) for t in todo))
    finally:
        if bar:
            bar.close()
        await close_judge()
    return stats


def _record(task, trajs, verdicts, teacher: SubagentSpec, cfg, threshold: float, keys: set[str],
            stats: dict[str, Any], out: Path) -> None:
    kept = errors = 0
    lines = []
    for tr, v in zip(trajs, verdicts):
        stats["episodes"] += 1
        if tr.error:
            errors += 1
            stats["episode_errors"] += 1
            continue
        if v.get("error") or v.get("score") is None:
            stats["judge_errors"] += 1
            continue
        if v["score"] < threshold:
            stats["below_threshold"] += 1
            continue
        key = dedup_key(tr)
        if key in keys:
            stats["duplicates"] += 1
            continue
        keys.add(key)
        tr.reward = v["score"]   # tr.verdict is the judge pool's full Verdict
        prov = {"teacher": {"label": teacher.label, "kind": teacher.kind, "model": teacher.model or teacher.path,
                            "base_url": teacher.base_url},
                "judge": v.get("judge", cfg.judge.backend), "verdict": v, "threshold": threshold,
                "task": {"id": task.id, "category": task.category, "project": task.project,
                         "language": task.language, "split": task.split},
                "dedup_key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        lines.append(json.dumps({"trajectory": tr.to_dict(), "provenance": prov}) + "\n")
        kept += 1
    stats["kept"] += kept
    if errors:
        stats["failed_tasks"].append({"task_id": task.id, "errors": errors,
                                      "first": next(t.error for t in trajs if t.error)[:200]})
    with out.open("a") as f:
        f.writelines(lines)
        f.flush()
    # Errored tasks are not marked done: a rerun retries them.
    if errors < len(trajs) or not trajs:
        with progress_path(out).open("a") as f:
            f.write(json.dumps({"task_id": task.id, "kept": kept, "episodes": len(trajs), "errors": errors}) + "\n")


def _progress(total: int, label: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"distill {label}", unit="task")
