"""GRPO step time, synchronous vs one-step off-policy, on the embedded default, in one run.

    python benchmarks/pipeline.py [--config tiny_cpu] [--steps 4] [key=value ...]

One Ray, one vLLM engine, one trainer group, one judge; the same GRPO loop the driver runs
(cluster.driver._grpo, checkpoints included) first with trainer.grpo.max_staleness=0, then 1.
Prints the per-step breakdown (waiting for rollouts, of which generation+sandbox and judging;
training; weight sync; the rest: logging and checkpoints) and the ratio it is judged by:
async step time / sync step time (target <= 0.75). The policy is the untrained model (SFT is
skipped): the timing, not the learning, is measured.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def run(cfg, steps: int) -> dict[int, dict]:
    from pathlib import Path

    from cluster.driver import _grpo, _judge, _load_tasks, _trainer
    from cluster.resources import cpus_needed, init_ray, make_layout
    from cluster.rollout_pool import RolloutPool
    from rollout.engine.vllm_engine import start_engine_actor

    run_dir = Path(cfg.output_dir)
    tasks = _load_tasks(cfg, cfg.tasks.train_split)
    counts = {"rollout": cfg.rollout.num_workers, "trainer": cfg.trainer.num_workers, "judge": cfg.judge.num_workers}
    init_ray(cfg.cluster, min_cpus=cpus_needed(cfg.cluster, counts))
    layout = make_layout(cfg.cluster, counts)
    pool = RolloutPool(cfg, None, cfg.rollout.num_workers, placement=lambda i: layout.options("rollout", i))
    trainer = _trainer(cfg, layout)
    judge = _judge(cfg, run_dir)
    engine = start_engine_actor(cfg)
    pool.set_engine(engine)
    out = {}
    try:
        for staleness in (0, 1):
            cfg.trainer.grpo.max_staleness = staleness
            t0 = time.monotonic()
            recs = await _grpo(cfg, tasks, pool, engine, trainer, judge, run_dir)
            wall = time.monotonic() - t0
            out[staleness] = {"step_s": wall / steps, **{k: statistics.fmean(r.get(k, 0.0) for r in recs) for k in (
                "time/wait_generate_s", "rollout_s", "judge_s", "time/train_s", "time/sync_s", "trained")}}
    finally:
        pool.shutdown()
        engine.kill()
        trainer.shutdown()
        layout.remove()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny_cpu")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from terminus.config import load_config
    cfg = load_config(args.config, [f"output_dir={tempfile.mkdtemp(prefix='terminus-bench-pipeline-')}",
                                    "logging.wandb_mode=disabled", f"trainer.grpo.steps={args.steps}",
                                    "trainer.checkpoint.every=1", "trainer.checkpoint.resume=never",
                                    *args.overrides])
    res = asyncio.run(run(cfg, args.steps))
    print(f"{args.steps} GRPO steps per mode, {cfg.trainer.grpo.tasks_per_step} tasks x "
          f"{cfg.trainer.grpo.rollouts_per_task} rollouts, {os.cpu_count()} CPUs")
    print(f"{'mode':6s} {'step':>7s} {'wait gen':>9s} {'(rollout':>9s} {'judge)':>7s} {'train':>7s} {'sync':>6s} {'rest':>6s}")
    for s, name in ((0, "sync"), (1, "async")):
        r = res[s]
        rest = r["step_s"] - r["time/wait_generate_s"] - r["time/train_s"] - r["time/sync_s"]
        print(f"{name:6s} {r['step_s']:7.1f} {r['time/wait_generate_s']:9.1f} {r['rollout_s']:9.1f} "
              f"{r['judge_s']:7.2f} {r['time/train_s']:7.1f} {r['time/sync_s']:6.2f} {rest:6.2f}   (seconds)")
    print(f"ratio async / sync step time = {res[1]['step_s'] / res[0]['step_s']:.2f}  (target <= 0.75)")
    if min(res[0]["trained"], res[1]["trained"]) == 0:
        print("WARNING: some steps trained on nothing (every group had zero reward variance): the train time is "
              "under-represented; use an SFT checkpoint as model.path for a representative figure")


if __name__ == "__main__":
    main()
