"""The step schedule with the real pieces it orders: a vLLM engine Ray actor whose weights are
reloaded (version bumped) between batches, rollout worker actors, bwrap sandboxes. Checks that
the policy_version the ENGINE stamped on each trained trajectory respects the staleness bound,
in sync and in one-step off-policy mode. (No optimizer here: `train` only records what it got;
the trainer's own tests cover the update.)"""
import asyncio

import pytest
import ray

from cluster.pipeline import run_steps
from cluster.rollout_pool import RolloutPool
from core.raycluster import init_ray
from rollout.engine import make_engine
from tasks.types import Task
from terminus.config import load_config
from core.model import resolve_model_path

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    init_ray(num_cpus=2, log_to_driver=False, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    cfg = load_config("tiny_cpu", ["model.dtype=float32", "rollout.sampling.max_tokens_per_turn=16",
                                   "rollout.episode.max_turns=2", "rollout.sandbox.command_timeout_s=10"])
    engine = make_engine(cfg, actor=True)
    pool = RolloutPool(cfg, engine, num_workers=1)
    repo = tmp_path_factory.mktemp("repo")
    (repo / "a.txt").write_text("hi\n")
    tasks = [Task(id=f"t{i}", language="python", category="run_script", project="p", repo_dir=str(repo),
                  request=f"Task {i}: print a.txt.") for i in range(2)]
    yield cfg, engine, pool, tasks
    pool.shutdown()
    engine.kill()
    ray.shutdown()


def run(setup, max_staleness, steps=3):
    cfg, engine, pool, tasks = setup
    weights = str(resolve_model_path("tiny"))
    trained = []

    async def main():
        base = await engine.policy_version()

        async def generate(step, version):
            groups, _ = await pool.run([(t, 2) for t in tasks], seed=step)
            return [t for g in groups for t in g]

        async def train(step, trajs, version):
            trained.append((version, [t.policy_version for t in trajs], [t.error for t in trajs]))
            return {}

        async def sync(version):
            await engine.update_weights(weights, version)   # same weights, new version: a real reload

        return await run_steps(base + steps, generate=generate, train=train, sync=sync,
                               max_staleness=max_staleness, start_step=base, start_version=base)

    return asyncio.run(main()), trained


def test_sync_mode_trains_only_current_weights(setup):
    recs, trained = run(setup, 0)
    assert len(recs) == 3
    for version, pvs, errors in trained:
        assert errors == [None] * 4
        assert pvs == [version] * 4


def test_async_mode_is_one_step_off_policy_at_most(setup):
    recs, trained = run(setup, 1)
    stal = [[version - pv for pv in pvs] for version, pvs, _ in trained]
    assert stal == [[0] * 4, [1] * 4, [1] * 4]
    assert all(r.stale_excluded == 0 for r in recs)
