"""The judge pool: turns trajectories into verdicts and rewards.

    pool = JudgePool(cfg.judge, run_dir="runs/x")
    trajs = pool.score(tasks_by_id, trajs)            # or: await pool.score_async(...)
    pool.metrics()                                    # judged, unjudgeable by reason, cache hits, latency

Every trajectory comes back with `verdict` set; `reward` is set only when the verdict is ok. An
unjudgeable trajectory (episode error, unknown task, endpoint failure, malformed verdict) keeps
reward None, so the trainer excludes it, and is counted here. Verdicts are cached on disk by a hash
of (judge config, rubric, task ground truth, trajectory): a resumed run never pays twice.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from judge.config import JudgeConfig
from judge.rubric import check_weights, reward, rubric_hash
from judge.types import Judge, Verdict
from rollout.trajectory import Trajectory
from tasks.types import Task

# Config keys that change what a verdict says (throughput knobs and paths do not).
_VERDICT_KEYS = ("backend", "model_path", "base_url", "model_name", "samples", "temperature", "max_tokens",
                 "response_format", "rationale_max_chars", "weights", "penalties")


def make_judge(cfg: JudgeConfig, layout=None) -> Judge:
    if cfg.backend == "rules":
        from judge.rules import RulesJudge
        return RulesJudge()
    if cfg.backend == "openai":
        from judge.llm import OpenAIJudge
        return OpenAIJudge(cfg)
    from judge.vllm_judge import VLLMJudge
    return VLLMJudge(cfg, layout=layout)


class VerdictCache:
    """One JSON file per verdict under `root`, written atomically (temp file + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> Verdict | None:
        path = self.root / f"{key}.json"
        try:
            return Verdict.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, TypeError, KeyError):
            return None  # a damaged entry is re-judged (and overwritten)

    def put(self, key: str, verdict: Verdict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(verdict.to_dict(), f)
        os.replace(tmp, self.root / f"{key}.json")


def cache_key(cfg: JudgeConfig, task: Task, traj: Trajectory) -> str:
    conf = {k: getattr(cfg, k) for k in _VERDICT_KEYS}
    content = {"task_id": traj.task_id, "messages": traj.messages, "turns": [asdict(t) for t in traj.turns],
               "report": traj.report, "finish_reason": traj.finish_reason, "error": traj.error}
    blob = json.dumps([conf, rubric_hash(), asdict(task.ground_truth), task.request,
                       task.reference.commands if task.reference else None, content], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class JudgePool:
    def __init__(self, cfg: JudgeConfig, run_dir: str | Path | None = None, judge: Judge | None = None,
                 layout=None):
        cfg = getattr(cfg, "judge", cfg)  # the whole run config works too
        check_weights(cfg.weights, cfg.penalties)
        self.layout = layout
        self.cfg = cfg
        self._judge = judge
        cache_dir = cfg.cache_dir or (Path(run_dir) / "judge_cache" if run_dir else None)
        self.cache = VerdictCache(cache_dir) if cache_dir else None
        self._sem: asyncio.Semaphore | None = None
        self._counts: Counter = Counter()
        self._unjudgeable: Counter = Counter()
        self._latencies: list[float] = []

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = make_judge(self.cfg, self.layout)
        return self._judge

    async def _call(self, task: Task, traj: Trajectory) -> Verdict:
        """One backend call, never retried here: endpoint errors are retried by the `openai` SDK (it sees the
        status and Retry-After), invalid verdicts by the LLM judge; a local engine's failure (a crashed
        actor) does not heal on a retry. A timeout or an exception marks the trajectory unjudgeable."""
        timeout = self.cfg.request_timeout_s
        if getattr(self.judge, "retries_itself", False):  # the SDK times out and retries each request
            timeout *= 2 * (self.cfg.max_retries + 2) * (self.cfg.invalid_verdict_retries + 1)  # an outer bound
        try:
            if (ready := getattr(self.judge, "ready", None)) is not None:
                await ready()   # a local engine's start-up, outside the request's timeout
            return await asyncio.wait_for(self.judge.judge(task, traj), timeout)
        except asyncio.TimeoutError:
            reason = f"timeout: no verdict within {timeout:g} s"
        except Exception as e:  # an engine/actor that failed to start or crashed
            reason = f"judge_error: {type(e).__name__}: {e}"
        return Verdict.unjudgeable(getattr(self.judge, "name", self.cfg.backend), reason)

    async def judge_one(self, task: Task | None, traj: Trajectory) -> Verdict:
        if task is None:
            return Verdict.unjudgeable(self.cfg.backend, f"unknown_task: no task '{traj.task_id}' was given")
        if traj.error is not None:  # nothing trustworthy to judge; cheap, so never cached
            return Verdict.unjudgeable(self.cfg.backend, f"episode_error: {traj.error}")
        key = cache_key(self.cfg, task, traj) if self.cache else None
        if key and (hit := self.cache.get(key)) is not None:
            self._counts["cache_hits"] += 1
            hit.cached = True
            return hit
        assert self._sem is not None
        async with self._sem:
            started = time.monotonic()
            v = await self._call(task, traj)
            v.latency_s = round(time.monotonic() - started, 4)
        self._latencies.append(v.latency_s)
        self._counts["invalid_verdicts"] += v.invalid_replies
        if v.ok:
            v.reward = round(reward({k: d.score for k, d in v.dimensions.items()},
                                    {k: f.flag for k, f in v.failures.items()}, self.cfg.weights,
                                    self.cfg.penalties), 6)
            if key:
                self.cache.put(key, v)  # unjudgeable verdicts are not cached: a later run may succeed
        return v

    async def score_async(self, tasks_by_id: dict[str, Task], trajectories: list[Trajectory]) -> list[Trajectory]:
        """Fill `verdict` (always) and `reward` (when judged) on each trajectory, in place; returns them."""
        self._sem = self._sem or asyncio.Semaphore(self.cfg.max_concurrency)
        verdicts = await asyncio.gather(*[self.judge_one(tasks_by_id.get(t.task_id), t) for t in trajectories])
        for traj, v in zip(trajectories, verdicts):
            traj.verdict = v.to_dict()
            traj.reward = v.reward if v.ok else None
            if v.ok:
                self._counts["judged"] += 1
            else:
                self._unjudgeable[v.reason.split(":")[0]] += 1
        return trajectories

    def score(self, tasks_by_id: dict[str, Task], trajectories: list[Trajectory]) -> list[Trajectory]:
        """Sync flavour (not from inside a running event loop)."""
        async def run() -> list[Trajectory]:
            self._sem = asyncio.Semaphore(self.cfg.max_concurrency)  # bound to this loop
            try:
                return await self.score_async(tasks_by_id, trajectories)
            finally:
                self._sem = None
                client = getattr(self._judge, "client", None)
                if client is not None:  # its HTTP session belongs to this event loop, which is about to end
                    await client.close()
        return asyncio.run(run())

    @property
    def rate_limit_wait_s(self) -> float:
        """Time spent waiting for the endpoint's per-minute budget (core.ratelimit; openai backend only)."""
        client = getattr(self._judge, "client", None)
        return client.limiter.waited_s if client is not None else 0.0

    def metrics(self) -> dict[str, Any]:
        lat = self._latencies
        return {
            "judge/judged": self._counts["judged"],
            "judge/unjudgeable": sum(self._unjudgeable.values()),
            **{f"judge/unjudgeable/{r}": n for r, n in sorted(self._unjudgeable.items())},
            "judge/cache_hits": self._counts["cache_hits"],
            "judge/invalid_verdicts": self._counts["invalid_verdicts"],
            "judge/rate_limit_wait_s": round(self.rate_limit_wait_s, 3),
            "judge/latency_mean_s": round(statistics.fmean(lat), 4) if lat else 0.0,
            "judge/latency_max_s": round(max(lat), 4) if lat else 0.0,
        }

    async def close(self) -> None:
        if self._judge is not None:
            await self._judge.close()


async def judge_batch(judge, tasks_by_id: dict, trajectories: list) -> dict[str, Any]:
    """Score a batch in place. Unjudgeable trajectories (endpoint down after its retries, episode
    errors) keep reward None: the trainer masks them; they are counted here, and the run goes on."""
    await judge.score_async(tasks_by_id, trajectories)
    rewards = [t.reward for t in trajectories if t.reward is not None]
    return {"judge_masked": len(trajectories) - len(rewards), "judged": len(rewards),
            "reward_mean": sum(rewards) / len(rewards) if rewards else float("nan")}
