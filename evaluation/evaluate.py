"""`terminus eval`: run each subagent on held-out tasks, judge every episode, write numbers + table + plots.

    results = await run_eval(cfg, [parse_subagent("tiny"), parse_subagent("rl=runs/x/hf")], tasks, "runs/eval")

Every subagent is checked before any episode starts (missing checkpoint, unreachable endpoint,
unserved model). Subagents run one after another (one engine in memory at a time); episodes of one
subagent run concurrently. A failed episode or judgement is kept, marked and counted.
Writes results.json (all numbers, per episode too), table.md and PNG plots into out_dir.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Sequence

from evaluation.judging import Judge, open_judge
from evaluation.metrics import aggregate, episode_row
from evaluation.render import markdown_table, write_plots
from evaluation.subagents import SubagentError, SubagentSpec, open_subagent, preflight


def token_counter(cfg: Any):
    """Counts tokens with the run's tokenizer (cfg.model.path), the same for every subagent."""
    from rollout.worker import load_tokenizer
    from core.model import resolve_model_path
    tok = load_tokenizer(str(resolve_model_path(cfg.model.path)))
    return lambda text: len(tok.encode(text, add_special_tokens=False)) if text else 0


async def evaluate_subagent(spec: SubagentSpec, cfg: Any, tasks: Sequence[Any], judge: Judge, count_tokens,
                            samples: int = 1, seed: int | None = 0, progress=None) -> list[dict[str, Any]]:
    """Per-episode rows of one subagent (samples episodes per task)."""
    from rollout.worker import run_requests
    by_id = {t.id: t for t in tasks}
    async with open_subagent(spec, cfg, tasks=list(tasks)) as (engine, tokenizer):
        groups = await run_requests([(t, samples) for t in tasks], engine, tokenizer, cfg.rollout, seed=seed,
                                    max_model_len=cfg.model.max_model_len,
                                    on_episode=(lambda _t: progress.update(1)) if progress else None)
    trajs = [tr for g in groups for tr in g]
    verdicts = await asyncio.gather(*(judge(by_id[tr.task_id], tr) for tr in trajs))
    rows = []
    for tr, v in zip(trajs, verdicts):
        row = episode_row(by_id[tr.task_id], tr, v, count_tokens)
        row["sample"] = tr.metadata.get("sample_index", 0)
        rows.append(row)
    return rows


async def check_all(specs: Sequence[SubagentSpec], cfg: Any, tasks: Sequence[Any]) -> None:
    if not tasks:
        raise SubagentError("no tasks to evaluate on")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise SubagentError(f"subagent labels must differ: {labels}; name them LABEL=SPEC")
    for s in specs:
        await preflight(s, cfg)


async def run_eval(cfg: Any, specs: Sequence[SubagentSpec], tasks: Sequence[Any], out_dir: str | Path,
                   samples: int = 1, show_progress: bool = True) -> dict[str, Any]:
    await check_all(specs, cfg, tasks)
    count_tokens = token_counter(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge, close_judge = open_judge(cfg, run_dir=str(out))
    results: dict[str, Any] = {"tasks": [t.id for t in tasks], "samples": samples, "subagents": {},
                               "judge": cfg.judge.backend, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        for spec in specs:
            progress = _progress(len(tasks) * samples, spec.label) if show_progress else None
            started = time.monotonic()
            try:
                rows = await evaluate_subagent(spec, cfg, tasks, judge, count_tokens, samples, cfg.seed, progress)
            except Exception as e:  # e.g. the engine would not start: this subagent's episodes all fail
                rows = [_failed_row(t, f"subagent {spec.label}: {type(e).__name__}: {e}") for t in tasks
                        for _ in range(samples)]
            if progress:
                progress.close()
            summary = aggregate(rows)
            summary["wall_s"] = round(time.monotonic() - started, 2)
            results["subagents"][spec.label] = {"spec": vars(spec), "summary": summary, "episodes": rows}
            write_outputs(results, out)  # after each subagent: a later crash keeps what is done
    finally:
        await close_judge()
    return results


def _failed_row(task: Any, error: str) -> dict[str, Any]:
    from rollout.trajectory import Trajectory
    traj = Trajectory(task.id, [], [], [], [], finish_reason="error", error=error)
    return episode_row(task, traj, None, lambda _text: 0)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    summaries = {name: r["summary"] for name, r in results["subagents"].items()}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "table.md").write_text(markdown_table(summaries) + "\n")
    write_plots(summaries, out)


def compare(paths: Sequence[str], out: Path) -> str:
    """Merge several results.json (label prefixed by run) into one table + plots."""
    merged: dict[str, Any] = {"subagents": {}}
    for p in paths:
        data = json.loads(Path(p).read_text())
        for name, r in data["subagents"].items():
            merged["subagents"][f"{Path(p).parent.name}/{name}"] = r
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(merged, out)
    return (out / "table.md").read_text()


def _progress(total: int, label: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"eval {label}", unit="ep", leave=False)
