"""A pool of rollout worker actors that survives worker deaths: the one rollout fan-out over Ray
(the training job, `terminus rollout`, the benchmarks).

The pool serves one engine or several (`rollout.engine.num_engines` vLLM engines): worker i sends its
episodes to engine i % len(engines), so requests spread over the workers spread over the engines.

`RolloutPool.run(requests)` shards (task, n) requests over the workers. If a worker actor dies
mid-step (killed, OOM, node lost), its shard is rerun on a freshly started replacement actor, so
the step still returns one group of n trajectories per request, in request order.
`RolloutPool.stream(requests)` yields each request's group as it finishes instead. Each restart
is counted (`restarts`) and logged; after `max_restarts` in one step the step fails with a clear
error instead of looping.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable, Sequence

from rollout.worker import RolloutWorker, summarize
from rollout.trajectory import Trajectory

log = logging.getLogger(__name__)


class RolloutPoolError(RuntimeError):
    pass


class RolloutPool:
    """Owns `num_workers` RolloutWorker actors; `placement(i)` gives actor i's `.options(...)`.

    `engines`: one engine, a list of engines (worker i uses engine i % len), or None (no actors
    until `set_engine`)."""

    def __init__(self, cfg, engines, num_workers: int, placement: Callable[[int], dict] | None = None,
                 max_restarts: int = 3):
        import ray
        from omegaconf import OmegaConf

        self._cls = ray.remote(RolloutWorker)
        self._yaml = OmegaConf.to_yaml(cfg)
        self.engines = _as_list(engines)
        self.placement = placement or (lambda i: {"num_cpus": 0})
        self.max_restarts = max_restarts
        self.restarts = 0
        self.num_workers = num_workers
        # No engine yet (set_engine gives one): no actors either, rather than start some to kill them
        self.workers = [self._start(i) for i in range(num_workers)] if self.engines else []

    def _start(self, i: int):
        return self._cls.options(max_concurrency=4, **self.placement(i)).remote(
            self._yaml, self.engines[i % len(self.engines)])

    def set_engine(self, engines) -> None:
        """Use other engines (e.g. the teacher for SFT demos, then the policy's): fresh actors hold them."""
        import ray

        engines = _as_list(engines)
        if self.workers and len(engines) == len(self.engines) and all(a is b for a, b in zip(engines, self.engines)):
            return   # the same engines (new weights reach their actors through them): keep the actors
        self.engines = engines
        for w in self.workers:
            ray.kill(w)
        self.workers = [self._start(i) for i in range(self.num_workers)]

    async def _run_shard(self, i: int, requests: list, seed: int | None, budget: list[int]) -> dict[str, Any]:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        while True:
            worker = self.workers[i]
            try:
                return await worker.run.remote(requests, seed)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                if self.workers[i] is not worker:
                    continue   # another call on this worker already replaced it: rerun on the new one
                if budget[0] <= 0:
                    raise RolloutPoolError(f"rollout worker {i} died and the restart budget ({self.max_restarts} "
                                           f"per step) is spent: {e}") from None
                budget[0] -= 1
                self.restarts += 1
                log.warning("rollout worker %d died (%s); rerunning its %d requests on a new actor",
                            i, type(e).__name__, len(requests))
                self.workers[i] = self._start(i)

    async def run(self, requests: Sequence[tuple[Any, int]], seed: int | None = None
                  ) -> tuple[list[list[Trajectory]], dict[str, Any]]:
        """One group per request (request order) and merged metrics (incl. restarts this step)."""
        if not self.workers:
            raise RolloutPoolError("the pool has no engine to run episodes with: call set_engine(engine) first")
        shards: list[list[int]] = [[] for _ in self.workers]
        for k in range(len(requests)):
            shards[k % len(self.workers)].append(k)
        budget = [self.max_restarts]
        before = self.restarts
        jobs = [(i, idx) for i, idx in enumerate(shards) if idx]
        results = await asyncio.gather(*(self._run_shard(i, [requests[k] for k in idx], seed, budget)
                                         for i, idx in jobs))
        groups: list[list[Trajectory]] = [[] for _ in requests]
        for (_, idx), res in zip(jobs, results):
            for k, g in zip(idx, res["groups"]):
                groups[k] = g
        metrics = summarize([t for g in groups for t in g])
        metrics["worker_restarts"] = self.restarts - before
        return groups, metrics

    async def stream(self, requests: Sequence[tuple[Any, int]], seed: int | None = None
                     ) -> AsyncIterator[tuple[int, list[Trajectory]]]:
        """(k, group of request k) as each group finishes, for writing results as they come: one call
        per request, request k on worker k % num_workers with seed `seed + k`. A dead worker is
        replaced as in `run` (one restart budget for the whole stream)."""
        if not self.workers:
            raise RolloutPoolError("the pool has no engine to run episodes with: call set_engine(engine) first")
        budget = [self.max_restarts]

        async def one(k: int) -> tuple[int, list[Trajectory]]:
            res = await self._run_shard(k % len(self.workers), [requests[k]], None if seed is None else seed + k,
                                        budget)
            return k, res["groups"][0]

        for done in asyncio.as_completed([one(k) for k in range(len(requests))]):
            yield await done

    def shutdown(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []


def _as_list(engines) -> list:
    if engines is None:
        return []
    return list(engines) if isinstance(engines, (list, tuple)) else [engines]
