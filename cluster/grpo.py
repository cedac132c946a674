"""One GRPO step, top to bottom, in its numbered phases:

    1. generate    sample the step's tasks (seeded by the step) and run n rollouts of each
    2. judge       score them; with dynamic sampling, rounds of replacement tasks (1-2 again) while
                   fewer than tasks_per_step groups are informative (rl.dynamic_sampling)
    3. advantages  group-relative advantages of the judged rewards (rl.algos, in trainer.grpo_step)
    4. update      one optimizer step on the trainer group (colocated engines sleep meanwhile)
    5. sync        push the new weights to every engine
    6. log         the step record's metrics and the sample table; held-out evaluation every eval_every
    7. checkpoint  every trainer.checkpoint.every steps, and after the last

cluster.pipeline.run_steps runs these phases step after step: synchronously, or one-step
off-policy (the next step's 1-2 overlap this step's 3-4). Each phase's metrics travel in the
step's StepRecord.
"""
from __future__ import annotations

import asyncio
import random
from pathlib import Path

from cluster.pipeline import Batch, StepRecord, run_steps
from core.tracking import SAMPLE_COLUMNS, sample_rows
from evaluation.heldout import describe_eval, evaluate
from judge.pool import judge_batch
from rl.dynamic_sampling import replacement_order, sample_groups
from rollout.worker import summarize


async def run_grpo(cfg, tasks, pool, engines: list, trainer, judge, run_dir: Path, start_step: int = 0,
                   start_version: int = 0, eval_tasks: list | None = None) -> list[StepRecord]:
    """GRPO steps [start_step, trainer.grpo.steps) on `tasks`; one StepRecord per step. `engines`: the
    policy's engines (the pool's), all slept, woken and synced together."""
    g = cfg.trainer.grpo
    tasks_by_id = {t.id: t for t in tasks}

    async def generate(step: int, version: int) -> Batch:
        # 1. generate: the step's tasks, seeded by the step, so a resumed run samples the same tasks
        # (replacements included) as an uninterrupted one.
        rng = random.Random(cfg.seed * 100_003 + step)
        batch = rng.sample(tasks, min(g.tasks_per_step, len(tasks)))
        extra = [tasks_by_id[i] for i in replacement_order(
            [t.id for t in tasks], [t.id for t in batch], rng.randrange(2**32), g.dynamic_sampling_max_extra)]
        clock = asyncio.get_running_loop().time
        drawn, judged, times, restarts = [], [], {"rollout_s": 0.0, "judge_s": 0.0}, 0

        async def run_round(chosen: list, rnd: int) -> list:
            nonlocal restarts
            t0 = clock()
            # other sampling seeds per round: a task drawn again must not replay the same rollouts
            groups, m = await pool.run([(t, g.rollouts_per_task) for t in chosen], seed=cfg.seed + step + 100_003 * rnd)
            flat = [t for grp in groups for t in grp]
            t1 = clock()
            # 2. judge
            judged.append(await judge_batch(judge, tasks_by_id, flat))
            times["rollout_s"] += t1 - t0
            times["judge_s"] += clock() - t1
            drawn.extend(flat)
            restarts += m.get("worker_restarts", 0)
            return groups

        groups, counts = await sample_groups(batch, extra, run_round, g.tasks_per_step,
                                             dynamic=g.dynamic_sampling_max_extra > 0,
                                             ahead=g.dynamic_sampling_ahead)
        # reward_mean is round 0's: the step's own tasks and those drawn ahead, all drawn at random;
        # the later rounds' replacements are chosen for their spread, and a curve over them would not
        # compare with a run without dynamic sampling
        metrics = {**summarize(drawn), "worker_restarts": restarts, **judged[0], **counts, **times,
                   "judge_masked": sum(j["judge_masked"] for j in judged),
                   "judged": sum(j["judged"] for j in judged)}
        # the sample table shows what the policy did, trained on or not
        return Batch([t for grp in groups for t in grp], metrics, drawn)

    # Colocated on GPU in sync mode the engines sleep while the trainer holds the devices
    # (with one-step off-policy generation overlaps training, so they stay awake).
    sleep = cfg.cluster.layout == "colocated" and cfg.cluster.sleep_engines and g.max_staleness == 0

    async def train(step: int, trajectories: list, version: int) -> dict:
        slept = await asyncio.gather(*(e.sleep() for e in engines)) if sleep else []
        # 3. advantages + 4. update: trainer.grpo_step computes the group advantages, then steps
        metrics = await asyncio.to_thread(trainer.grpo_step, trajectories, version)
        await asyncio.gather(*(e.wake_up() for e, s in zip(engines, slept) if s))
        return metrics

    async def sync(version: int) -> None:
        # 5. sync
        await asyncio.to_thread(trainer.push_weights, engines, version, run_dir / "weights" / "latest")

    async def after_step(rec: StepRecord) -> None:
        # 6. log: the update's metrics, then the step's rollout/judge metrics, then the times so far.
        # One W&B step axis for the whole run: SFT steps first, then GRPO steps.
        m = rec.metrics
        m.update(rec.generated)
        m.update({f"time/{k}": v for k, v in vars(rec.times).items()})
        trainer.tracker.log(m, trainer.sft_step + rec.step + 1, prefix="grpo/")
        if cfg.logging.sample_table_every and rec.step % cfg.logging.sample_table_every == 0:
            trainer.tracker.table("grpo/samples", SAMPLE_COLUMNS, sample_rows(rec.drawn, g.tasks_per_step),
                                  trainer.sft_step + rec.step + 1)
        if eval_tasks and g.eval_every and (rec.step + 1) % g.eval_every == 0 and rec.step + 1 < g.steps:
            e = await evaluate(cfg, eval_tasks, pool, judge, cfg.seed)
            report_eval(trainer, f"step{rec.step + 1}", e)
        # 7. checkpoint
        every = cfg.trainer.checkpoint.every
        if (every and (rec.step + 1) % every == 0) or rec.step + 1 == g.steps:
            await asyncio.to_thread(trainer.save_checkpoint, rec.step + 1)

    return await run_steps(g.steps, generate=generate, train=train, sync=sync, after_step=after_step,
                           max_staleness=g.max_staleness, start_step=start_step, start_version=start_version)


def report_eval(trainer, name: str, e: dict) -> None:
    """A held-out evaluation to the console and the tracker (at the run's current step)."""
    print(describe_eval(name, e), flush=True)
    trainer.tracker.log({k: v for k, v in e.items() if k not in ("passes", "task_rewards")},  # scalars only
                        trainer.sft_step + trainer.step,
                        prefix=f"eval/{name}/")
