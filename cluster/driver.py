"""The end-to-end training job behind `terminus train`: SFT on a teacher's demonstrations (the
scripted teacher, or a model behind an endpoint by trainer.sft.teacher, judged and filtered), then
GRPO (cluster/grpo.py: generate -> judge -> advantages -> update -> sync -> log -> checkpoint, with
held-out evaluation every K steps), either stage alone by `trainer.stage`.

Wiring only: each part lives in its package and is imported here plainly. This module places them
on the cluster (cluster.resources: the `rollout.engine.num_engines` vLLM engines, built by
rollout.engine.make_engine, take rollout bundles 0..N-1's GPUs, the rollout workers the CPUs, the
judge pool the judge bundles), keeps rollout workers alive and spreads them over the engines
(cluster.rollout_pool), runs the teacher's demonstrations (rollout.teacher; an openai teacher through
evaluation.distill), the SFT stage, the GRPO stage (cluster.grpo, on the step schedule of
cluster.pipeline) and the held-out evaluations (evaluation.heldout), and measures the job's peak
memory (cluster.memory).

Held-out evaluation (mean judged reward on tasks.eval_split, several passes to measure the noise)
runs on the untrained model, after SFT and after GRPO; the job writes summary.json, metrics.jsonl,
a W&B run (offline by default) and rewards.png into output_dir, and prints its peak memory.
summary.json's `engines` says, per engine, how many requests it served and its final policy version.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from cluster.grpo import report_eval, run_grpo
from cluster.memory import PeakMemory
from cluster.resources import check_engines, cpus_needed, make_layout
from cluster.rollout_pool import RolloutPool
from cluster.storage import check_shared_run_dir
from core.errors import ConfigError, UserError
from core.files import write_json_atomic
from core.model import resolve_model_path
from core.raycluster import init_ray
from evaluation.distill import check_endpoints, describe_teacher, teacher_demos
from evaluation.heldout import compare_evals, evaluate, results_table
from evaluation.judging import pool_judge
from evaluation.render import plot_rewards
from evaluation.tasks_io import load_task_list
from judge.pool import JudgePool
from rl.config import check_grpo_sampling
from rl.group import TrainerGroup
from rl.resume import prepare_run_dir
from rollout.engine import make_engine
from rollout.engine.vllm_engine import cluster_has_gpus
from rollout.teacher import choose_demo_tasks, collect_demos, load_demos
from rollout.worker import load_tokenizer

log = logging.getLogger(__name__)


def layout_counts(cfg) -> dict[str, int]:
    """Actors per pool of the training job's layout (cluster.resources)."""
    return {"rollout": cfg.rollout.num_workers, "trainer": cfg.trainer.num_workers, "judge": cfg.judge.num_workers}


def check_engines_config(cfg) -> None:
    """Training pushes the trainer's weights into the engines: only vLLM engines take them, and each
    of the rollout.engine.num_engines engines needs a rollout bundle."""
    check_engines(cfg.rollout.engine.num_engines, layout_counts(cfg))
    if cfg.rollout.engine.kind != "vllm":
        raise ConfigError(f"rollout.engine.kind={cfg.rollout.engine.kind}: training needs rollout.engine.kind=vllm "
                          "(the trainer's weights are loaded into the engine after each update, and an "
                          "OpenAI-compatible endpoint cannot take them); evaluate an endpoint with "
                          "`terminus eval -s openai:MODEL@URL` instead")


def train(cfg) -> dict[str, Any]:
    """Run the configured stages; returns the final metrics. Prints progress and peak memory."""
    return asyncio.run(_train(cfg))


async def _train(cfg) -> dict[str, Any]:
    # One event loop for the whole job: the judge pool's limits and the engine client live in it.
    # Trainer calls block (they wait on the ranks), so they run in threads.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")   # keep the console to the job's progress
    check_engines_config(cfg)        # fail fast, before anything is written or started
    await check_endpoints(cfg)       # the openai teacher's and judge's endpoints answer (before Ray)
    run_dir = prepare_run_dir(cfg)   # refuses to resume a run of another config; saves this one's
    if "grpo" in cfg.trainer.stage:
        check_grpo_sampling(cfg)
    ev = cfg.trainer.eval
    train_tasks = load_task_list(cfg, cfg.tasks.train_split)
    eval_tasks = load_task_list(cfg, cfg.tasks.eval_split) if ev.enabled else []
    counts = layout_counts(cfg)
    demo_tasks, undemonstrated = choose_demo_tasks(train_tasks, cfg.trainer.sft.demo_fraction, cfg.seed)
    grpo_tasks = undemonstrated if cfg.trainer.grpo.tasks == "undemonstrated" else train_tasks
    if not grpo_tasks:
        raise ValueError("trainer.grpo.tasks=undemonstrated leaves GRPO no tasks: the teacher demonstrates "
                         "every train task; set trainer.sft.demo_fraction below 1")
    summary: dict[str, Any] = {"tasks": {"train": len(train_tasks), "demonstrated": len(demo_tasks),
                                         "grpo": len(grpo_tasks), "eval": len(eval_tasks)}}
    evals: dict[str, dict] = {}
    transfer: dict[str, dict] = {}                       # the same stages on the held-out family
    transfer_tasks = load_task_list(cfg, ev.transfer_split) if ev.enabled and ev.transfer_split else []
    loop = asyncio.get_running_loop()
    started, wall = loop.time(), {}                      # wall-clock seconds per phase
    with PeakMemory(interval_s=2.0) as mem:
        init_ray(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus, min_cpus=cpus_needed(cfg.cluster, counts))
        check_shared_run_dir(cfg.output_dir)   # several nodes: each must see the run dir (absolute, shared)
        layout = make_layout(cfg.cluster, counts)
        model_path = str(resolve_model_path(cfg.model.path))
        tokenizer = load_tokenizer(model_path)
        # Engine i takes rollout bundle i's GPU share, the workers the CPUs (cluster.resources.placement);
        # worker i runs its episodes on engine i % num_engines (the pool spreads them).
        pool = RolloutPool(cfg, None, cfg.rollout.num_workers, placement=lambda i: layout.options("rollout", i))
        judge = JudgePool(cfg.judge, run_dir=run_dir, layout=layout)

        def start_engines() -> list:
            """The rollout.engine.num_engines engines; their actors start loading at once, side by side."""
            engines = []
            for i in range(cfg.rollout.engine.num_engines):
                options = layout.options("engine", i)
                if cluster_has_gpus() and not options["num_gpus"]:
                    raise ConfigError("the cluster has GPUs but the vLLM engine's bundle has none: set "
                                      "cluster.rollout.num_gpus (each engine takes its rollout bundle's GPUs)")
                engines.append(make_engine(cfg, tokenizer, actor=True, options=options))
            return engines

        engines: list = []
        trainer = None
        try:
            # Without GPUs the engines start (~30 s of imports and profiling) while the trainer sets up;
            # on GPUs after it, so that vLLM sizes its memory with the trainer's share already taken.
            if not cluster_has_gpus():
                engines = start_engines()
            trainer = await asyncio.to_thread(TrainerGroup, cfg, layout=layout)
            start_step, start_version = (await asyncio.to_thread(trainer.resume_point)
                                         if cfg.trainer.checkpoint.resume == "auto" else (0, 0))
            resumed_in_grpo = trainer.stage == "grpo"
            run_sft = "sft" in cfg.trainer.stage and not resumed_in_grpo
            if not engines:
                engines = start_engines()
            if run_sft and cfg.trainer.sft.data:   # a distilled (e.g. frontier-teacher) dataset
                demos, m = load_demos(cfg.trainer.sft.data, tokenizer)
                print(f"[sft] {m['demos_total']} trajectories from {cfg.trainer.sft.data}, "
                      f"{m['demos_failed']} without a report (not trained on)", flush=True)
            elif run_sft and cfg.trainer.sft.teacher.kind == "openai":   # a model teacher, judged and filtered
                demos, m = await teacher_demos(cfg, demo_tasks, pool_judge(judge, cfg), tokenizer,
                                               run_dir / "teacher_demos.jsonl")
                summary["teacher"] = m
                trainer.tracker.log(m, 0, prefix="teacher/")
                print(describe_teacher(cfg, m), flush=True)
                if not demos:   # said plainly, never an SFT stage on nothing
                    why = {k.rsplit("/", 1)[1]: n for k, n in judge.metrics().items()
                           if k.startswith("judge/unjudgeable/")}   # so far all the teacher's episodes
                    fix = "lower trainer.sft.teacher.min_reward" + (f", or fix the judge (unjudgeable: {why})"
                                                                     if why else "")
                    if "grpo" not in cfg.trainer.stage:
                        raise UserError(f"trainer.stage=sft: the teacher kept no trajectory with a report to train "
                                        f"on; {fix}")
                    print(f"[sft] skipped: the teacher kept no trajectory with a report to train on ({fix}); GRPO "
                          f"starts from the base model", flush=True)
                    summary["sft"] = {"skipped": "the teacher kept no trajectory with a report", "demos": 0}
                    run_sft = False
            elif run_sft:   # the scripted teacher needs no engine: it plays while vLLM starts
                demos, m = await collect_demos(cfg, demo_tasks, pool, tokenizer, run_dir / "sft_demos.jsonl")
                flawed = "".join(f", {m[f'demos_{flaw}']} {flaw} (trainer.sft.teacher.{key})"
                                 for flaw, key in (("terse", "terse_fraction"), ("misstated", "misstate_fraction"),
                                                  ("retried", "retry_fraction"))
                                 if m[f"demos_{flaw}"])
                print(f"[sft] {m['demos_total']} teacher demos, {m['demos_failed']} failed{flawed}", flush=True)
            # The engines are up before any episode runs on them: an episode's timeout must not count their start.
            await asyncio.gather(*(e.info() for e in engines))
            # Weight sync (disk, nccl or ipc by rollout.engine.weight_transfer) goes through the trainer's
            # WeightSync interface (rollout.engine.base): init_weight_transfer once, push_weights per sync.
            await asyncio.to_thread(trainer.init_weight_transfer, engines)
            if resumed_in_grpo:   # the engines start from the base weights: give them the checkpoint's
                await asyncio.to_thread(trainer.push_weights, engines, start_version, run_dir / "weights" / "resumed")
            pool.set_engine(engines)

            async def held_out(stage: str, repeats: int = 0) -> None:
                """Evaluate a stage on the held-out split, and on the held-out family when configured."""
                t0 = loop.time()
                if eval_tasks:
                    evals[stage] = await evaluate(cfg, eval_tasks, pool, judge, cfg.seed,
                                                  run_dir / f"eval_{stage}.jsonl", repeats)
                    report_eval(trainer, stage, evals[stage])
                if transfer_tasks:
                    transfer[stage] = await evaluate(cfg, transfer_tasks, pool, judge, cfg.seed,
                                                     run_dir / f"transfer_{stage}.jsonl", ev.transfer_repeats)
                    report_eval(trainer, f"{stage}/transfer", transfer[stage])
                wall[f"eval_{stage}"] = loop.time() - t0

            wall["startup"] = loop.time() - started
            if eval_tasks and not resumed_in_grpo and trainer.sft_step == 0:
                await held_out("untrained", ev.untrained_repeats)
            if run_sft:
                t0 = loop.time()
                sft = await asyncio.to_thread(trainer.sft, demos)
                summary["sft"] = sft
                await asyncio.to_thread(trainer.save_checkpoint, trainer.sft_step)
                await asyncio.to_thread(trainer.push_weights, engines, 0, run_dir / "weights" / "sft")
                wall["sft"] = loop.time() - t0
                await held_out("sft")
            if "grpo" in cfg.trainer.stage:
                t0 = loop.time()
                records = await run_grpo(cfg, grpo_tasks, pool, engines, trainer, judge, run_dir,
                                         start_step, start_version, eval_tasks)
                summary["grpo"] = [dict(step=r.step, **r.metrics) for r in records]
                wall["grpo"] = loop.time() - t0
                await held_out("grpo")
            if cfg.trainer.checkpoint.export_hf:
                summary["final_hf"] = str(await asyncio.to_thread(trainer.export_hf, run_dir / "hf"))
            # what each engine served and which weights it holds (every engine gets every update)
            summary["engines"] = [{k: info[k] for k in ("requests", "policy_version")}
                                  for info in await asyncio.gather(*(e.info() for e in engines))]
        finally:
            pool.shutdown()
            for e in engines:
                e.kill()
            if trainer is not None:
                trainer.shutdown()
            layout.remove()
    summary["evals"] = evals
    summary["transfer"] = transfer
    summary["improvements"] = compare_evals(evals)
    wall["total"] = loop.time() - started
    summary["wall_s"] = wall
    for name, c in summary["improvements"].items():
        print(f"[eval] {name}: {c['diff']:+.3f} held-out reward (standard error of the difference {c['se']:.3f}: "
              f"{c['z']:+.1f} SE)", flush=True)
    print(results_table(evals, transfer, wall), flush=True)
    summary["peak_memory_gib"] = mem.peak_bytes / 2**30
    summary["judge"] = judge.metrics()
    if evals or summary.get("grpo"):
        summary["plot"] = str(plot_rewards(run_dir, summary.get("grpo", []), evals))
    print(mem.describe(), flush=True)
    write_json_atomic(run_dir / "summary.json", summary)
    return summary
