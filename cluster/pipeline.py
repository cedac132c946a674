"""The GRPO step loop's schedule: synchronous, or one-step off-policy (rollouts for step k+1 run
while step k trains), with a staleness bound that is checked, not assumed.

The loop only orders four callbacks, so it is the same for every backend:

    generate(step, version) -> list[Trajectory]   # rollouts with the weights of `version`
    train(step, trajectories, version) -> dict     # one optimizer step; afterwards version + 1
    sync(version)                                  # push weights `version` to the engines
    after_step(step, metrics)                      # log, evaluate, checkpoint

Weights are synced only while no generation is in flight (the engines are idle between batches),
so every trajectory comes from exactly one policy version. With `max_staleness == 0` the loop is
generate -> train -> sync. With `max_staleness >= 1`, right after batch k arrives (and the engines
got the newest weights) generation of batch k+1 starts, then batch k trains: batch k+1 is then one
version behind when it trains. Trajectories older than the bound (which this schedule never
makes, but a resumed or hand-fed batch could) are excluded from training and counted, and the
trainer's importance-sampling correction handles the one-version lag.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence


@dataclass
class StepTimes:
    wait_generate_s: float = 0.0   # time the loop waited for rollouts (hidden by training when async)
    train_s: float = 0.0
    sync_s: float = 0.0
    other_s: float = 0.0           # after_step: logging, evaluation, checkpoint
    step_s: float = 0.0


@dataclass
class StepRecord:
    step: int
    version: int                   # the policy version being trained (before the update)
    staleness: list[int] = field(default_factory=list)   # per trajectory used: version - policy_version
    stale_excluded: int = 0
    times: StepTimes = field(default_factory=StepTimes)
    metrics: dict[str, Any] = field(default_factory=dict)


def split_by_staleness(trajectories: Sequence[Any], version: int, max_staleness: int) -> tuple[list, list]:
    """(usable, too_stale): a trajectory is usable when version - policy_version <= max_staleness."""
    ok, stale = [], []
    for t in trajectories:
        (ok if version - t.policy_version <= max_staleness else stale).append(t)
    return ok, stale


async def run_steps(steps: int, *, generate: Callable[[int, int], Awaitable[list]],
                    train: Callable[[int, list, int], Awaitable[dict]], sync: Callable[[int], Awaitable[None]],
                    after_step: Callable[[StepRecord], Awaitable[None]] | None = None,
                    max_staleness: int = 0, start_step: int = 0, start_version: int = 0) -> list[StepRecord]:
    """Run GRPO steps [start_step, steps) and return one record per step (staleness, times, metrics)."""
    version = start_version
    records: list[StepRecord] = []
    pending: asyncio.Task | None = None
    for step in range(start_step, steps):
        t0 = time.monotonic()
        rec = StepRecord(step=step, version=version)
        if pending is None:
            pending = asyncio.ensure_future(generate(step, version))
        batch = await pending
        pending = None
        rec.times.wait_generate_s = time.monotonic() - t0
        if max_staleness >= 1 and step + 1 < steps:
            # Engines are idle and hold `version`: start the next batch before training this one.
            pending = asyncio.ensure_future(generate(step + 1, version))
        usable, stale = split_by_staleness(batch, version, max_staleness)
        rec.staleness = [version - t.policy_version for t in usable]
        rec.stale_excluded = len(stale)
        t1 = time.monotonic()
        rec.metrics = dict(await train(step, usable, version) or {})
        version += 1
        t2 = time.monotonic()
        rec.times.train_s = t2 - t1
        t3 = time.monotonic()
        if pending is not None:
            # Weights can only move while no generation is in flight.
            await asyncio.shield(pending)
            rec.times.wait_generate_s += time.monotonic() - t3
            t3 = time.monotonic()
        await sync(version)
        rec.times.sync_s = time.monotonic() - t3
        rec.metrics.update(stale_excluded=rec.stale_excluded,
                           staleness_max=max(rec.staleness, default=0),
                           staleness_mean=sum(rec.staleness) / len(rec.staleness) if rec.staleness else 0.0)
        t4 = time.monotonic()
        # What after_step logs is the step so far (generate, train, sync); the record keeps the full
        # step, after_step's own logging/evaluation/checkpoint (other_s) included.
        rec.times.step_s = t4 - t0
        if after_step is not None:
            await after_step(rec)
        rec.times.other_s = time.monotonic() - t4
        rec.times.step_s = time.monotonic() - t0
        records.append(rec)
    return records
