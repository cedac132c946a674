"""Rollout workers: (task, n) requests in, trajectories grouped by task out, plus metrics.

`run_requests` is the plain in-process function; `RolloutWorker` is the Ray actor body that wraps it
(one event loop running up to `rollout.episodes_per_worker` episodes at once, each in its own
sandbox, all sharing one engine); the Ray fan-out over such actors is cluster.rollout_pool.RolloutPool.
Failed episodes come back marked (`error`), never dropped.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any, Callable, Sequence

from rollout.episode import SandboxFactory, run_episode
from rollout.tokens import ChatFormat
from rollout.trajectory import Trajectory


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_path)


async def run_requests(requests: Sequence[tuple[Any, int]], engine, tokenizer, cfg, *,
                       max_concurrent: int | None = None, sandbox_factory: SandboxFactory | None = None,
                       seed: int | None = None, max_model_len: int | None = None,
                       on_episode: Callable[[Trajectory], None] | None = None) -> list[list[Trajectory]]:
    """Run n episodes of each task concurrently; returns one list (group) per request, in order.

    cfg is a RolloutConfig. Every episode of a group shares its group_id.
    """
    fmt = ChatFormat.of(tokenizer)
    gate = asyncio.Semaphore(max_concurrent or cfg.episodes_per_worker)

    async def one(task, group_id: str, k: int) -> Trajectory:
        async with gate:
            traj = await run_episode(task, engine, tokenizer, cfg, fmt=fmt, sandbox_factory=sandbox_factory,
                                     group_id=group_id, seed=None if seed is None else seed + 1000 * k,
                                     max_model_len=max_model_len)
        traj.metadata["sample_index"] = k
        if on_episode:
            on_episode(traj)
        return traj

    groups = []
    for task, n in requests:
        gid = f"{task.id}:{uuid.uuid4().hex[:8]}"
        groups.append([one(task, gid, k) for k in range(n)])
    flat = await asyncio.gather(*(c for g in groups for c in g))
    out, i = [], 0
    for g in groups:
        out.append(list(flat[i:i + len(g)]))
        i += len(g)
    return out


def summarize(trajectories: Sequence[Trajectory]) -> dict[str, Any]:
    """Counts and means over episodes: failures by kind, finish reasons, turns, tokens, format errors, timings."""
    n = len(trajectories)
    failures = Counter(t.error.split(":", 1)[0] for t in trajectories if t.error)
    reasons = Counter(t.finish_reason for t in trajectories)
    turns = sum(len(t.turns) for t in trajectories)
    cut = sum(x.cut_off for t in trajectories for x in t.turns)   # turns that hit max_tokens_per_turn
    gen_tokens = sum(sum(t.response_mask) for t in trajectories)
    fmt_err = sum(t.format_errors for t in trajectories)
    gen_s = sum(x.gen_time_s for t in trajectories for x in t.turns)
    exec_s = sum(x.exec_time_s for t in trajectories for x in t.turns)
    return {
        "episodes": n,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        # out of time in the policy's own commands: judged as failures and trained on (rollout/episode.py)
        "episodes_timed_out": sum(t.finish_reason == "timeout" and t.error is None for t in trajectories),
        # sandbox, engine (an engine-bound timeout included), setup: masked out of training
        "episodes_infra_error": sum(t.error is not None for t in trajectories),
        "finish_reasons": dict(reasons),
        "reports": reasons.get("report", 0),
        "turns": turns,
        "turns_per_episode": turns / n if n else 0.0,
        "generated_tokens": gen_tokens,
        "total_tokens": sum(len(t.token_ids) for t in trajectories),
        "format_errors": fmt_err,
        "format_error_rate": fmt_err / turns if turns else 0.0,
        "turns_cut_off": cut,
        "turns_cut_off_frac": cut / turns if turns else 0.0,
        "episodes_cut_off": sum(bool(t.turns) and t.turns[-1].cut_off for t in trajectories),
        "gen_time_s": gen_s,
        "exec_time_s": exec_s,
        "episode_wall_s_mean": (sum(t.metadata.get("wall_s", 0.0) for t in trajectories) / n) if n else 0.0,
    }


class RolloutWorker:
    """Ray actor body: holds a tokenizer and an engine client; runs requests on its own event loop.

    cluster.rollout_pool.RolloutPool starts and keeps these actors; `engine` is a RayEngine (its
    actor handle travels to this actor) or any engine of the seam (rollout.engine.base.Engine).
    """

    def __init__(self, cfg_yaml: str, engine):
        from omegaconf import OmegaConf

        from core.model import resolve_model_path
        self.cfg = OmegaConf.create(cfg_yaml)
        self.engine = engine
        self.tokenizer = load_tokenizer(str(resolve_model_path(self.cfg.model.path)))

    async def run(self, requests: list[tuple[Any, int]], seed: int | None = None) -> dict[str, Any]:
        t0 = time.monotonic()
        groups = await run_requests(requests, self.engine, self.tokenizer, self.cfg.rollout, seed=seed,
                                    max_model_len=self.cfg.model.max_model_len)
        metrics = summarize([t for g in groups for t in g])
        metrics["wall_s"] = time.monotonic() - t0
        return {"groups": groups, "metrics": metrics}
