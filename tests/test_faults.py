"""Injected faults: a rollout worker actor killed mid-step has its episodes rerun on a restarted
actor, and the step still returns the right number of trajectories (real Ray actors, real bwrap
sandboxes, the scripted teacher as engine)."""
import asyncio

import pytest
import ray

from cluster.rollout_pool import RolloutPool, RolloutPoolError
from rollout.teacher import ScriptedTeacher
from tasks.types import ReferenceSolution, Task
from terminus.config import load_config
from core.model import resolve_model_path

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    from core.raycluster import init_ray
    init_ray(num_cpus=2, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_model_path("tiny")))
    repo = tmp_path_factory.mktemp("repo")
    (repo / "a.txt").write_text("hello\n")
    tasks = [Task(id=f"t{i}", language="python", category="run_script", project="p", repo_dir=str(repo),
                  request=f"Task {i}: print a.txt slowly.",
                  reference=ReferenceSolution(commands=["sleep 1.5", "cat a.txt"],
                                              report="<status>success</status><summary>hello</summary>"))
             for i in range(4)]
    cfg = load_config("tiny_cpu", ["rollout.sandbox.command_timeout_s=10"])
    return cfg, tasks, ScriptedTeacher(tasks, tok, max_turns=cfg.rollout.episode.max_turns)


def test_killed_worker_episodes_rerun_on_a_new_actor(ray_local, setup):
    cfg, tasks, teacher = setup
    pool = RolloutPool(cfg, teacher, num_workers=2)
    try:
        async def step():
            run = asyncio.ensure_future(pool.run([(t, 3) for t in tasks]))
            await asyncio.sleep(1.0)          # episodes are mid-command (sleep 1.5)
            victim = pool.workers[1]
            ray.kill(victim, no_restart=True)
            groups, metrics = await run
            return victim, groups, metrics

        victim, groups, metrics = asyncio.run(step())
        assert pool.workers[1] is not victim
        assert metrics["worker_restarts"] == 1
        assert [len(g) for g in groups] == [3, 3, 3, 3]
        assert [(t.error, t.finish_reason) for g in groups for t in g] == [(None, "report")] * 12
        assert [g[0].task_id for g in groups] == [t.id for t in tasks]
    finally:
        pool.shutdown()


def test_restart_budget_is_bounded(ray_local, setup):
    cfg, tasks, teacher = setup
    pool = RolloutPool(cfg, teacher, num_workers=1, max_restarts=0)
    try:
        async def step():
            run = asyncio.ensure_future(pool.run([(tasks[0], 1)]))
            await asyncio.sleep(0.5)
            ray.kill(pool.workers[0], no_restart=True)
            return await run

        with pytest.raises(RolloutPoolError, match="restart budget"):
            asyncio.run(step())
    finally:
        pool.shutdown()


def test_pool_starts_actors_only_for_an_engine_and_keeps_them_for_the_same_one(ray_local, setup):
    cfg, tasks, teacher = setup
    pool = RolloutPool(cfg, None, num_workers=1)
    try:
        assert pool.workers == []   # nothing to run episodes with yet: no actor is started
        with pytest.raises(RolloutPoolError, match="set_engine"):
            asyncio.run(pool.run([(tasks[0], 1)]))
        pool.set_engine(teacher)
        first = pool.workers[0]
        pool.set_engine(teacher)     # the same engine (a weight update): the actor stays
        assert pool.workers[0] is first
        groups, _ = asyncio.run(pool.run([(tasks[0], 1)]))
        assert groups[0][0].finish_reason == "report"
        other = ScriptedTeacher(tasks, teacher.tokenizer, max_turns=cfg.rollout.episode.max_turns)
        pool.set_engine(other)       # another engine: fresh actors hold it
        assert pool.workers[0] is not first
        assert asyncio.run(pool.run([(tasks[1], 1)]))[0][0][0].finish_reason == "report"
    finally:
        pool.shutdown()


def test_demo_collection_marks_and_counts_failures(ray_local, setup, tmp_path):
    from rollout.teacher import collect_demos
    from rollout.io import read_trajectories

    cfg, tasks, teacher = setup
    broken = Task(id="broken", language="python", category="run_script", project="p",
                  repo_dir=str(tmp_path / "does-not-exist"), request="Task broken: nothing is there.",
                  reference=ReferenceSolution(commands=["ls"], report="<status>success</status>"))
    pool = RolloutPool(cfg, None, num_workers=1)
    try:
        good, m = asyncio.run(collect_demos(cfg, [tasks[0], broken], pool, teacher.tokenizer,
                                            tmp_path / "demos.jsonl"))
    finally:
        pool.shutdown()
    assert [t.task_id for t in good] == ["t0"]
    assert (m["demos_total"], m["demos_failed"]) == (2, 1)
    saved = read_trajectories(tmp_path / "demos.jsonl")
    assert [t.task_id for t in saved] == ["t0", "broken"] and saved[1].error


def test_judge_endpoint_down_masks_and_counts_and_the_run_continues(setup, tmp_path, monkeypatch):
    """A real HTTP judge endpoint answering 500: retries, then the step's trajectories are masked
    (reward None) and counted; the step loop goes on to the next step."""
    from judge.pool import judge_batch
    from cluster.pipeline import run_steps
    from judge.pool import JudgePool
    from rollout.worker import run_requests
    from core.testing.openai_server import Reply, ScriptedOpenAIServer

    cfg, tasks, teacher = setup
    monkeypatch.setenv("JUDGE_KEY", "k")
    trained = []
    with ScriptedOpenAIServer(lambda body: Reply(status=500, raw_body="overloaded")) as srv:
        jcfg = load_config("tiny_cpu", ["judge.backend=openai", f"judge.base_url={srv.base_url}",
                                        "judge.model_name=judge", "judge.api_key_env=JUDGE_KEY",
                                        "judge.max_retries=1", "judge.request_timeout_s=5"]).judge
        pool = JudgePool(jcfg, run_dir=tmp_path)
        tasks_by_id = {t.id: t for t in tasks}
        step_metrics = {}

        async def generate(step, version):
            groups = await run_requests([(tasks[step], 2)], teacher, teacher.tokenizer, cfg.rollout)
            flat = [t for g in groups for t in g]
            step_metrics[step] = await judge_batch(pool, tasks_by_id, flat)
            return flat

        async def train(step, trajs, version):
            trained.append([t.reward for t in trajs])
            return {}

        async def sync(v):
            teacher.policy_version = v      # the "engine" now holds weights v

        async def main():
            try:
                return await run_steps(2, generate=generate, train=train, sync=sync)
            finally:
                teacher.policy_version = 0
                await pool.close()

        records = asyncio.run(main())
        hits = len(srv.requests)
    assert [r.step for r in records] == [0, 1]                       # the run went on
    assert trained == [[None, None], [None, None]]                   # masked, not dropped
    assert [m["judge_masked"] for m in step_metrics.values()] == [2, 2]
    m = pool.metrics()
    assert m["judge/unjudgeable"] == 4 and m["judge/judged"] == 0
    assert hits >= 8                                                  # each trajectory was retried
    assert not any(p.suffix == ".tmp" for p in tmp_path.rglob("*"))   # nothing half-written


def test_async_actors_run_on_the_stdlib_event_loop(ray_local):
    # Under uvloop (Ray's default when installed; vLLM installs it) a sandbox spawn deadlocked in the forked
    # child and froze a rollout worker for good: init_ray keeps actors on the stdlib loop (core.raycluster).
    pytest.importorskip("uvloop")   # without it every loop is the stdlib's and this checks nothing

    @ray.remote(num_cpus=0)
    class Probe:
        async def loop_class(self) -> str:
            loop = asyncio.get_running_loop()
            return f"{type(loop).__module__}.{type(loop).__name__}"

    assert ray.get(Probe.remote().loop_class.remote()).startswith("asyncio.")
