"""The GRPO step loop's schedule: synchronous, or one-step off-policy (rollouts for step k+1 run
while step k trains), with a staleness bound that is checked, not assumed.

The loop only orders four callbacks, so it is the same for every backend; cluster/grpo.py gives
them for GRPO, numbered by phase:

    generate(step, version) -> Batch | list   # 1-2. rollouts with the weights of `version`, judged
    train(step, trajectories, version) -> dict # 3-4. advantages + one optimizer step; then version + 1
    sync(version)                              # 5. push weights `version` to the engines
    after_step(record)                         # 6-7. log (evaluate), checkpoint

A step's metrics travel in its StepRecord: `generated` (what generate's Batch measured: rollouts,
judging, sampling), `metrics` (the update's, the staleness), `times`.

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
class Batch:
    """What `generate` returns (a bare list is a Batch of those trajectories): the trajectories to
    train on, the step's own metrics (rollouts, judging, sampling) and every trajectory it drew
    (the sample table's rows, trained on or not)."""
    trajectories: list
    metrics: dict[str, Any] = field(default_factory=dict)
    drawn: list = field(default_factory=list)


@dataclass
class StepRecord:
    step: int
    version: int                   # the policy version being trained (before the update)
    staleness: list[int] = field(default_factory=list)   # per trajectory used: version - policy_version
    stale_excluded: int = 0
    times: StepTimes = field(default_factory=StepTimes)
    generated: dict[str, Any] = field(default_factory=dict)   # the Batch's metrics
    metrics: dict[str, Any] = field(default_factory=dict)     # the update's (train), then the staleness
    drawn: list = field(default_factory=list)   # the Batch's drawn trajectories, until after_step returns


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
        # 1-2. generate + judge (already under way when the previous step started it)
        if pending is None:
            pending = asyncio.ensure_future(generate(step, version))
        batch = await pending
        batch = batch if isinstance(batch, Batch) else Batch(list(batch))
        rec.generated, rec.drawn = batch.metrics, batch.drawn
        pending = None
        rec.times.wait_generate_s = time.monotonic() - t0
        if max_staleness >= 1 and step + 1 < steps:
            # Engines are idle and hold `version`: start the next batch before training this one.
            pending = asyncio.ensure_future(generate(step + 1, version))
        usable, stale = split_by_staleness(batch.trajectories, version, max_staleness)
        rec.staleness = [version - t.policy_version for t in usable]
        rec.stale_excluded = len(stale)
        # 3-4. advantages + update
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
        # 5. sync
        await sync(version)
        rec.times.sync_s = time.monotonic() - t3
        rec.metrics.update(stale_excluded=rec.stale_excluded,
                           staleness_max=max(rec.staleness, default=0),
                           staleness_mean=sum(rec.staleness) / len(rec.staleness) if rec.staleness else 0.0)
        t4 = time.monotonic()
        # What after_step logs is the step so far (generate, train, sync); the record keeps the full
        # step, after_step's own logging/evaluation/checkpoint (other_s) included.
        rec.times.step_s = t4 - t0
        if after_step is not None:   # 6-7. log (evaluate), checkpoint
            await after_step(rec)
        rec.drawn = []               # the record keeps the step's metrics, not its trajectories
        rec.times.other_s = time.monotonic() - t4
        rec.times.step_s = time.monotonic() - t0
        records.append(rec)
    return records
