"""The verdict seam for eval and distill: `async judge(task, trajectory) -> verdict dict`, a flat,
JSON-ready view of the project's judge (judge/) verdict:

    {"score": reward or None, "dimensions": {name: 0..1}, "failure_modes": [flagged names],
     "error": why unjudgeable or None, "judge": name, "verdict": the full Verdict as a dict}

The judge is the project's JudgePool with cfg.judge.backend: `rules` (the programmatic judge; the
embedded default) or an LLM judge (`vllm`, `openai`).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from core.errors import UserError

Judge = Callable[[Any, Any], Awaitable[dict[str, Any]]]


class JudgeUnavailable(UserError, ValueError):
    """The configured judge backend cannot be built here; raised before any work starts."""


def flatten(verdict: Any, cfg: Any, episode_failed: bool) -> dict[str, Any]:
    """A Verdict as the flat dict eval/distill store. An episode that failed is not a judge error."""
    from judge.rubric import MAX_SCORE
    dims = {k: float(v.score) for k, v in verdict.dimensions.items()}
    flags = {k: bool(v.flag) for k, v in verdict.failures.items()}
    score = verdict.reward if verdict.ok else None  # the pool's reward; None when unjudgeable
    error = None if verdict.ok or episode_failed else (verdict.reason or "unjudgeable")
    return {"score": score, "dimensions": {k: v / MAX_SCORE for k, v in dims.items()},
            "failure_modes": sorted(k for k, f in flags.items() if f), "error": error, "judge": verdict.judge,
            "verdict": verdict.to_dict()}


def open_judge(cfg: Any, run_dir: str | None = None) -> tuple[Judge, Callable[[], Awaitable[None]]]:
    """(judge, close) over the project's JudgePool (its retries, verdict cache under
    `<run_dir>/judge_cache` or cfg.judge.cache_dir, and reward formula). The backend is built here,
    by judge.pool.make_judge (the one judge factory), before any episode runs, so a judge that
    cannot start fails first."""
    from judge.pool import JudgePool
    try:
        pool = JudgePool(cfg.judge, run_dir=run_dir)
        pool.judge  # noqa: B018 - build the backend now
    except (ValueError, ImportError) as e:
        raise JudgeUnavailable(f"judge.backend={cfg.judge.backend!r} cannot start: {e}") from None
    return pool_judge(pool, cfg), pool.close


def pool_judge(pool: Any, cfg: Any) -> Judge:
    """The verdict seam over an open JudgePool (the training job's own, or open_judge's)."""
    from judge.types import Verdict

    async def judge_one(task, traj) -> dict[str, Any]:
        try:
            [judged] = await pool.score_async({task.id: task}, [traj])
        except Exception as e:  # marked and counted, never dropped
            return {"score": None, "dimensions": {}, "failure_modes": [], "judge": cfg.judge.backend,
                    "error": f"{type(e).__name__}: {e}", "verdict": None}
        return flatten(Verdict.from_dict(judged.verdict), cfg, traj.error is not None)

    return judge_one
