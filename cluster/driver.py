"""The end-to-end training job behind `terminus train`: SFT on scripted-teacher demonstrations,
then GRPO (sample tasks -> n rollouts each -> judge -> advantages -> update -> weight sync -> log
-> checkpoint, evaluation every K steps), either stage alone by `trainer.stage`.

Wiring only: each part lives in its package (tasks, rollout, judge, rl); this module places them
on the cluster (cluster.resources), keeps rollout workers alive (cluster.rollout_pool), orders
the GRPO step (cluster.pipeline: sync or one-step off-policy) and measures the job's peak memory
(cluster.memory).

Status: the Ray layout, rollout pool, scripted teacher, step schedule and memory monitor are
real and tested; the trainer (rl) and the task loader (tasks.load_tasks) were not in the tree when this was
written, so `_trainer` and `_load_tasks` stop with an error naming the missing piece instead of
pretending.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from cluster.memory import PeakMemory
from cluster.pipeline import run_steps
from cluster.resources import cpus_needed, init_ray, make_layout
from cluster.rollout_pool import RolloutPool
from cluster.teacher import ScriptedTeacher

log = logging.getLogger(__name__)


class MissingPartError(RuntimeError):
    """A part the job needs is not installed in this tree; names the module and attribute."""


def _need(module: str, attr: str, what: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise MissingPartError(f"`terminus train` needs {module}.{attr} ({what}), which this tree does not "
                               f"have yet") from None


def _load_tasks(cfg, split: str) -> list:
    return list(_need("tasks", "load_tasks", "the task corpus")(cfg.tasks.corpus, split))


def _trainer(cfg, layout):
    return _need("rl", "TrainerGroup", "the FSDP2 trainer worker group")(cfg, layout=layout)


def _judge(cfg, run_dir: Path):
    from judge.pool import JudgePool

    return JudgePool(cfg.judge, run_dir=run_dir)


async def judge_batch(judge, tasks_by_id: dict, trajectories: list) -> dict[str, Any]:
    """Score a batch in place. Unjudgeable trajectories (endpoint down after its retries, episode
    errors) keep reward None: the trainer masks them; they are counted here, and the run goes on."""
    await judge.score_async(tasks_by_id, trajectories)
    rewards = [t.reward for t in trajectories if t.reward is not None]
    return {"judge_masked": len(trajectories) - len(rewards), "judged": len(rewards),
            "reward_mean": sum(rewards) / len(rewards) if rewards else float("nan")}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a killed job never leaves half a file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


async def collect_demos(cfg, tasks: list, pool: RolloutPool, tokenizer, out: Path) -> tuple[list, dict]:
    """SFT demonstrations: the scripted teacher plays every train task once in real sandboxes.

    Failed episodes (error set or no report) are kept in the file, marked, and counted, but not
    trained on.
    """
    from rollout.io import write_trajectories

    pool.set_engine(ScriptedTeacher(tasks, tokenizer, max_turns=cfg.rollout.episode.max_turns))
    groups, metrics = await pool.run([(t, 1) for t in tasks if t.reference is not None], seed=cfg.seed)
    demos = [t for g in groups for t in g]
    write_trajectories(out, demos)
    good = [t for t in demos if t.error is None and t.finish_reason == "report"]
    metrics.update(demos_total=len(demos), demos_failed=len(demos) - len(good))
    return good, metrics


def train(cfg) -> dict[str, Any]:
    """Run the configured stages; returns the final metrics. Prints progress and peak memory."""
    from omegaconf import OmegaConf

    from rollout.engine.vllm_engine import start_engine_actor
    from rollout.worker import load_tokenizer
    from terminus.model import resolve_model_path

    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    train_tasks = _load_tasks(cfg, cfg.tasks.train_split)   # fail fast, before anything starts
    counts = {"rollout": cfg.rollout.num_workers, "trainer": cfg.trainer.num_workers,
              "judge": cfg.judge.num_workers}
    with PeakMemory(interval_s=2.0) as mem:
        init_ray(cfg.cluster, min_cpus=cpus_needed(cfg.cluster, counts))
        layout = make_layout(cfg.cluster, counts)
        model_path = str(resolve_model_path(cfg.model.path))
        tokenizer = load_tokenizer(model_path)
        pool = RolloutPool(cfg, None, cfg.rollout.num_workers, placement=lambda i: layout.options("rollout", i))
        trainer = _trainer(cfg, layout)
        summary: dict[str, Any] = {}
        try:
            if "sft" in cfg.trainer.stage:
                demos, m = asyncio.run(collect_demos(cfg, train_tasks, pool, tokenizer, run_dir / "sft_demos.jsonl"))
                print(f"[sft] {m['demos_total']} teacher demos, {m['demos_failed']} failed", flush=True)
                summary["sft"] = trainer.sft(demos)
            if "grpo" in cfg.trainer.stage:
                judge = _judge(cfg, run_dir)
                engine = start_engine_actor(cfg)
                pool.set_engine(engine)
                summary["grpo"] = asyncio.run(_grpo(cfg, train_tasks, pool, engine, trainer, judge, run_dir))
        finally:
            pool.shutdown()
            layout.remove()
    summary["peak_memory_gib"] = mem.peak_bytes / 2**30
    print(mem.describe(), flush=True)
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


async def _grpo(cfg, tasks, pool, engine, trainer, judge, run_dir: Path) -> list[dict]:
    import random

    g = cfg.trainer.grpo
    rng = random.Random(cfg.seed)
    tasks_by_id = {t.id: t for t in tasks}
    step_metrics: dict[int, dict] = {}
    start_step, start_version = trainer.resume_point() if cfg.trainer.checkpoint.resume == "auto" else (0, 0)

    async def generate(step: int, version: int) -> list:
        batch = rng.sample(tasks, min(g.tasks_per_step, len(tasks)))
        groups, metrics = await pool.run([(t, g.rollouts_per_task) for t in batch], seed=cfg.seed + step)
        flat = [t for grp in groups for t in grp]
        step_metrics[step] = {**metrics, **await judge_batch(judge, tasks_by_id, flat)}
        return flat

    async def train_step(step: int, trajectories: list, version: int) -> dict:
        return await asyncio.to_thread(trainer.grpo_step, trajectories, version)

    async def sync(version: int) -> None:
        path = await asyncio.to_thread(trainer.export_hf, run_dir / "weights" / f"v{version}")
        await engine.update_weights(str(path), version)

    async def after_step(rec) -> None:
        m = rec.metrics
        m.update(step_metrics.pop(rec.step, {}))
        print(f"[grpo] step {rec.step} v{rec.version} reward {m.get('reward_mean', float('nan')):.3f} "
              f"staleness<={m['staleness_max']} step {rec.times.step_s:.1f}s", flush=True)
        every = cfg.trainer.checkpoint.every
        if every and (rec.step + 1) % every == 0:
            await asyncio.to_thread(trainer.save_checkpoint, rec.step + 1)

    records = await run_steps(g.steps, generate=generate, train=train_step, sync=sync, after_step=after_step,
                              max_staleness=g.max_staleness, start_step=start_step, start_version=start_version)
    return [dict(step=r.step, **r.metrics) for r in records]
