"""Judge throughput, and what judging adds to a rollout step when it overlaps with rollout.

  1. rules judge: trajectories/s over the shipped calibration set (real trajectories of every built-in
     task, faithful and corrupted), through the JudgePool (no cache, so every verdict is computed);
  2. the tiny vLLM judge (Ray actor, JSON-schema guided decoding): trajectories/s on a few of them,
     after a warm-up (its verdicts are random but parsed);
  3. rollout+judge on the embedded default (tiny_cpu: vLLM tiny policy, real sandboxes, rules judge):
     one step of `--episodes` episodes, each judged as soon as it finishes (overlapping the rest of
     the rollout). Judging adds the time from the last episode's end to the last verdict; printed as a
     fraction of the step time (target < 10%), next to the serial cost (judge after the rollout).

    python benchmarks/judge.py [--config tiny_cpu] [--episodes 32] [--vllm-trajs 8] [--skip-vllm] [key=value ...]
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def calibration_batch():
    from judge.calibrate import DEFAULT_SET, as_batch, read_set
    return as_batch(read_set(DEFAULT_SET))


def bench_rules(rounds: int = 5) -> None:
    from judge.config import JudgeConfig
    from judge.pool import JudgePool

    tasks, trajs = calibration_batch()
    pool = JudgePool(JudgeConfig(backend="rules"))
    pool.score(tasks, copy.deepcopy(trajs))  # warm-up (regex compilation)
    t0 = time.perf_counter()
    for _ in range(rounds):
        pool.score(tasks, copy.deepcopy(trajs))
    dt = time.perf_counter() - t0
    n = rounds * len(trajs)
    print(f"rules judge: {n} trajectories in {dt:.3f} s = {n / dt:,.0f} trajectories/s "
          f"({1000 * dt / n:.3f} ms each)")


async def bench_vllm(n: int) -> None:
    from judge.config import JudgeConfig
    from judge.pool import JudgePool

    tasks, trajs = calibration_batch()
    trajs = trajs[::max(1, len(trajs) // n)][:n]
    cfg = JudgeConfig(backend="vllm", model_path="tiny", max_tokens=900, rationale_max_chars=24,
                      max_model_len=4096, max_retries=1)
    pool = JudgePool(cfg)
    t0 = time.perf_counter()
    await pool.score_async(tasks, copy.deepcopy(trajs[:1]))  # starts the engine actor
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = await pool.score_async(tasks, copy.deepcopy(trajs))
    dt = time.perf_counter() - t0
    ok = sum(t.reward is not None for t in out)
    print(f"vllm tiny judge: engine start + first verdict {start_s:.1f} s; {len(out)} trajectories in {dt:.2f} s "
          f"= {len(out) / dt:.2f} trajectories/s; {ok}/{len(out)} verdicts valid")
    await pool.close()


async def bench_overlap(cfg, episodes: int) -> None:
    from judge.pool import JudgePool
    from rollout.engine import make_engine
    from rollout.worker import load_tokenizer, run_requests
    from tasks import load_tasks
    from core.model import resolve_model_path

    tokenizer = load_tokenizer(str(resolve_model_path(cfg.model.path)))
    engine = make_engine(cfg, actor=True)
    train = load_tasks("builtin", "train")
    tasks = [train[i % len(train)] for i in range(episodes)]
    by_id = {t.id: t for t in train}
    pool = JudgePool(cfg.judge)  # no run dir: no cache
    await run_requests([(tasks[0], 2)], engine, tokenizer, cfg.rollout, seed=1,
                       max_model_len=cfg.model.max_model_len)  # warm-up

    # Serial: the rollout, then the whole batch judged.
    t0 = time.perf_counter()
    groups = await run_requests([(t, 1) for t in tasks], engine, tokenizer, cfg.rollout, seed=2,
                                max_concurrent=episodes, max_model_len=cfg.model.max_model_len)
    rollout_s = time.perf_counter() - t0
    flat = [g[0] for g in groups]
    t1 = time.perf_counter()
    await pool.score_async(by_id, flat)
    serial_judge_s = time.perf_counter() - t1

    # Overlapped: each episode judged the moment it ends.
    pending: list[asyncio.Task] = []

    def on_episode(traj) -> None:
        pending.append(asyncio.ensure_future(pool.score_async(by_id, [traj])))

    t0 = time.perf_counter()
    groups = await run_requests([(t, 1) for t in tasks], engine, tokenizer, cfg.rollout, seed=3,
                                max_concurrent=episodes, max_model_len=cfg.model.max_model_len, on_episode=on_episode)
    rollout_end = time.perf_counter()
    await asyncio.gather(*pending)
    step_s = time.perf_counter() - t0
    added = step_s - (rollout_end - t0)
    judged = sum(g[0].reward is not None for g in groups)
    print(f"rollout+judge ({episodes} episodes, judge={cfg.judge.backend}): rollout {rollout_s:.2f} s, serial judging "
          f"+{serial_judge_s * 1000:.1f} ms ({serial_judge_s / (rollout_s + serial_judge_s):.2%} of the step)")
    print(f"  overlapped: step {step_s:.2f} s, judging adds {added * 1000:.1f} ms after the last episode = "
          f"{added / step_s:.2%} of step time (target < 10%); {judged}/{episodes} judged; {pool.metrics()}")
    engine.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny_cpu")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--vllm-trajs", type=int, default=8)
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray

    from core.raycluster import init_ray
    from terminus.config import load_config
    cfg = load_config(args.config, args.overrides)
    bench_rules()
    init_ray(log_to_driver=bool(os.environ.get("BENCH_VERBOSE")))
    try:
        asyncio.run(bench_overlap(cfg, args.episodes))
        if not args.skip_vllm:
            asyncio.run(bench_vllm(args.vllm_trajs))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
