"""The step schedule: sync vs one-step off-policy. Checks the staleness bound on the trajectories
actually trained, that weights never move while a generation is in flight, and the overlap."""
import asyncio
import time

import pytest

from cluster.pipeline import run_steps, split_by_staleness
from rollout.trajectory import Trajectory

pytestmark = pytest.mark.timeout(60)


class Sim:
    """Engines + trainer with real waits: generation and training each take `dt` seconds."""

    def __init__(self, dt=0.2, n=4):
        self.dt, self.n = dt, n
        self.engine_version = 0
        self.in_flight = 0
        self.trained = []        # (step, current version, [policy_version of each trajectory])
        self.events = []

    async def generate(self, step, version):
        assert version == self.engine_version, "generation asked for weights the engine does not hold"
        self.in_flight += 1
        self.events.append(("gen_start", step))
        await asyncio.sleep(self.dt)
        self.in_flight -= 1
        return [Trajectory(task_id=f"s{step}", messages=[], token_ids=[], response_mask=[], logprobs=[],
                           policy_version=self.engine_version) for _ in range(self.n)]

    async def train(self, step, trajs, version):
        self.events.append(("train", step))
        self.trained.append((step, version, [t.policy_version for t in trajs]))
        time.sleep(self.dt)       # the trainer blocks like a real forward/backward
        self.events.append(("train_end", step))
        await asyncio.sleep(0)
        return {"n": len(trajs)}

    async def sync(self, version):
        assert self.in_flight == 0, "weights synced during a generation"
        self.engine_version = version


def run(max_staleness, steps=5, dt=0.2):
    sim = Sim(dt)
    # Training blocks the loop thread in real trainers too, so run it in a thread to overlap.
    async def train(step, trajs, version):
        return await asyncio.to_thread(lambda: asyncio.run(sim.train(step, trajs, version)))
    t0 = time.monotonic()
    recs = asyncio.run(run_steps(steps, generate=sim.generate, train=train, sync=sim.sync,
                                 max_staleness=max_staleness))
    return sim, recs, time.monotonic() - t0


def test_sync_mode_trains_on_policy():
    sim, recs, _ = run(0)
    assert [r.step for r in recs] == [0, 1, 2, 3, 4]
    for step, version, pvs in sim.trained:
        assert pvs == [version] * 4                      # staleness 0
    assert all(r.metrics["staleness_max"] == 0 and r.metrics["n"] == 4 for r in recs)
    assert [e for e in sim.events if e[0] == "gen_start"] == [("gen_start", k) for k in range(5)]


def test_async_mode_holds_the_staleness_bound_and_overlaps():
    sim_sync, _, _ = run(0)
    sim, recs, _ = run(1)
    stal = [version - pv for _, version, pvs in sim.trained for pv in pvs]
    assert max(stal) == 1 and min(stal) == 0             # one step off-policy, never more
    assert [r.metrics["staleness_max"] for r in recs] == [0, 1, 1, 1, 1]
    assert sum(r.stale_excluded for r in recs) == 0
    # generation k+1 starts before training k ends, at every step (the overlap; its speed-up is
    # measured by a benchmark, not asserted here where a loaded machine makes timings noisy)
    ev = sim.events
    for k in range(4):
        assert ev.index(("gen_start", k + 1)) < ev.index(("train_end", k)), ev
    # and in sync mode never: generation k+1 waits for training k to finish
    for k in range(4):
        assert sim_sync.events.index(("gen_start", k + 1)) > sim_sync.events.index(("train_end", k))


def test_too_stale_trajectories_are_excluded_and_counted():
    mk = lambda v: Trajectory(task_id="x", messages=[], token_ids=[], response_mask=[], logprobs=[], policy_version=v)
    ok, stale = split_by_staleness([mk(5), mk(4), mk(2)], version=5, max_staleness=1)
    assert [t.policy_version for t in ok] == [5, 4] and [t.policy_version for t in stale] == [2]

    async def gen(step, version):          # a hand-fed batch (e.g. from before a resume) is old
        return [mk(version - 3), mk(version)]

    async def train(step, trajs, version):
        return {"n": len(trajs)}

    async def sync(v):
        pass

    recs = asyncio.run(run_steps(2, generate=gen, train=train, sync=sync, max_staleness=1, start_version=3))
    assert [(r.metrics["n"], r.stale_excluded) for r in recs] == [(1, 1), (1, 1)]


def test_after_step_sees_the_step_time_so_far():
    """The step time logged from after_step covers generate + train + sync (it is not 0 there);
    the record then keeps the full step, after_step's own time included."""
    sim = Sim(dt=0.05, n=2)
    seen = []

    async def after_step(rec):
        seen.append(rec.times.step_s)
        await asyncio.sleep(0.05)

    recs = asyncio.run(run_steps(2, generate=sim.generate, train=sim.train, sync=sim.sync, after_step=after_step))
    assert all(s >= 0.09 for s in seen), seen                  # at least one generation + one training
    assert all(r.times.step_s >= s + 0.04 and r.times.other_s >= 0.04 for r, s in zip(recs, seen))
