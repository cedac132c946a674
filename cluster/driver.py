"""The end-to-end training job behind `terminus train`: SFT on scripted-teacher demonstrations,
then GRPO (sample tasks -> n rollouts each -> judge -> advantages -> update -> weight sync -> log
-> checkpoint, evaluation every K steps), either stage alone by `trainer.stage`.

Wiring only: each part lives in its package (tasks, rollout, judge, rl); this module places them
on the cluster (cluster.resources), keeps rollout workers alive (cluster.rollout_pool), orders
the GRPO step (cluster.pipeline: sync or one-step off-policy) and measures the job's peak memory
(cluster.memory).

Held-out evaluation (mean judged reward on tasks.eval_split, several passes to measure the noise)
runs on the untrained model, after SFT and after GRPO; the job writes summary.json, metrics.jsonl,
a W&B run (offline by default) and rewards.png into output_dir, and prints its peak memory.
"""
from __future__ import annotations

import asyncio
import importlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from cluster.memory import PeakMemory
from cluster.pipeline import run_steps
from cluster.resources import cpus_needed, init_ray, make_layout
from cluster.rollout_pool import RolloutPool
from rollout.teacher import ScriptedTeacher, choose_demo_tasks
from core.errors import UserError
from core.tracking import SAMPLE_COLUMNS, sample_rows

log = logging.getLogger(__name__)


class MissingPartError(UserError, RuntimeError):
    """A part the job needs is not installed in this tree; names the module and attribute."""


def _need(module: str, attr: str, what: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        raise MissingPartError(f"`terminus train` needs {module}.{attr} ({what}), which this tree does not "
                               f"have yet") from None


def _load_tasks(cfg, split: str) -> list:
    return list(_need("tasks", "load_tasks", "the task corpus")(cfg.tasks, split,
                                                               observation_cap=cfg.rollout.sandbox.output_limit_bytes))


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


async def sample_groups(batch: list, replacements: list, run_round, target: int, dynamic: bool
                        ) -> tuple[list[list], dict[str, int]]:
    """A step's groups, with dynamic sampling (rl/dynamic_sampling.py) when `dynamic`: after `batch`,
    rounds of tasks from `replacements` (in order) run while fewer than `target` groups are
    informative, and only the first `target` informative groups are returned. Without it every
    group of `batch` is returned (the trainer drops the uninformative ones itself).
    `run_round(tasks, round)` runs and judges the tasks' groups; round 0 is `batch`."""
    from rl.dynamic_sampling import extra_draws, group_rewards, informative, keep_groups

    groups = list(await run_round(batch, 0))
    flags = [informative(group_rewards(grp)) for grp in groups]
    used = rounds = 0
    while dynamic:
        n = extra_draws(target - sum(flags), sum(flags), len(groups), len(replacements) - used)
        if n == 0:
            break
        rounds += 1
        more = await run_round(replacements[used:used + n], rounds)
        used += n
        groups += more
        flags += [informative(group_rewards(grp)) for grp in more]
    keep = keep_groups(flags, target) if dynamic else list(range(len(groups)))
    stats = {"groups_drawn": len(groups), "groups_dropped_zero_variance": flags.count(False),
             "groups_dropped_surplus": sum(flags) - sum(flags[i] for i in keep),
             "extra_tasks_drawn": used, "sampling_rounds": rounds + 1}
    return [groups[i] for i in keep], stats


def write_json_atomic(path: Path, data: Any) -> None:
    """Write then rename, so a killed job never leaves half a file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


async def collect_demos(cfg, tasks: list, pool: RolloutPool, tokenizer, out: Path) -> tuple[list, dict]:
    """SFT demonstrations: the scripted teacher plays each given task once in real sandboxes.

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


async def evaluate(cfg, tasks: list, pool: RolloutPool, judge, seed: int, out: Path | None = None,
                   repeats: int = 0) -> dict[str, Any]:
    """Mean judged reward on held-out tasks over `repeats` independent passes, with two measures of
    the noise a claimed improvement must beat: the spread of the pass means, and the standard error
    of the mean over every judged episode (the spread of three pass means is itself noisy and tends
    to be low; the standard error is the steadier figure). `repeats` = 0: trainer.eval.repeats."""
    import statistics

    from judge.rules import exact_facts

    ev = cfg.trainer.eval
    tasks = tasks[: ev.max_tasks] if ev.max_tasks else tasks
    by_id = {t.id: t for t in tasks}
    means, rewards, exact = [], [], []
    for r in range(repeats or ev.repeats):
        groups, _ = await pool.run([(t, ev.samples_per_task) for t in tasks], seed=seed + 7919 * r)
        flat = [t for g in groups for t in g]
        m = await judge_batch(judge, by_id, flat)
        means.append(m["reward_mean"])
        rewards += [t.reward for t in flat if t.reward is not None]
        exact += [exact_facts(by_id[t.task_id], t) for t in flat if t.reward is not None]
        if r == 0 and out is not None:   # keep one pass's trajectories to read what the policy does
            from rollout.io import write_trajectories
            write_trajectories(out, flat)
    sem = statistics.stdev(rewards) / len(rewards) ** 0.5 if len(rewards) > 1 else float("nan")
    return {"reward_mean": statistics.fmean(means), "reward_std_between_passes": statistics.pstdev(means),
            "reward_sem": sem, "episodes": len(rewards), "passes": means,
            "exact_fact_rate": statistics.fmean(exact) if exact else float("nan")}


EVALUATED = ("untrained", "sft", "grpo")            # the held-out evaluations of a run, in order
STAGES = (("sft", "untrained"), ("grpo", "sft"))   # (after, before): each stage against the one it starts from


def compare_evals(evals: dict[str, dict]) -> dict[str, dict]:
    """Each stage against the one before it (SFT vs untrained, GRPO vs SFT): the difference of the
    held-out means, its standard error sqrt(se_a^2 + se_b^2) (independent evaluations), and how many
    standard errors the difference is (z)."""
    out = {}
    for after, before in STAGES:
        if after in evals and before in evals:
            a, b = evals[after], evals[before]
            diff = a["reward_mean"] - b["reward_mean"]
            se = math.hypot(a["reward_sem"], b["reward_sem"])
            out[f"{after}-{before}"] = {"diff": diff, "se": se,
                                        "z": diff / se if se > 0 else math.copysign(math.inf, diff)}
    return out


def across_runs(runs: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """Run-to-run noise, from the held-out evaluations of several runs of one config (other seeds):
    per stage, the mean over runs and its spread between runs (sample standard deviation); per
    comparison, the margin (mean after - mean before), the noise it must beat (the larger of the two
    stages' spreads), their ratio, and the paired view: each run's own difference, its mean, spread,
    standard error, and in how many runs it is positive. `runs`: run name -> that run's `evals`."""
    import statistics

    def spread(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else float("nan")

    stages: dict[str, dict] = {}
    for name in EVALUATED:
        xs = [e[name]["reward_mean"] for e in runs.values() if name in e]
        if xs:
            stages[name] = {"mean": statistics.fmean(xs), "std_between_runs": spread(xs), "runs": len(xs)}
    comparisons: dict[str, dict] = {}
    for after, before in STAGES:
        paired = [e[after]["reward_mean"] - e[before]["reward_mean"] for e in runs.values()
                  if after in e and before in e]
        if not paired:
            continue
        margin = stages[after]["mean"] - stages[before]["mean"]
        spreads = [stages[s]["std_between_runs"] for s in (after, before)]
        noise = max((x for x in spreads if not math.isnan(x)), default=math.nan)   # a stage seen in one run has none
        comparisons[f"{after}-{before}"] = {
            "margin": margin, "noise": noise, "margin_over_noise": margin / noise if noise > 0 else float("nan"),
            "diff_mean": statistics.fmean(paired), "diff_std": spread(paired),
            "diff_sem": spread(paired) / len(paired) ** 0.5, "positive": sum(d > 0 for d in paired),
            "runs": len(paired)}
    return {"stages": stages, "comparisons": comparisons}


def plot_rewards(run_dir: Path, grpo_steps: list[dict], evals: dict[str, dict]) -> Path:
    """PNG: the GRPO training reward per step, and held-out reward at each evaluation (with noise)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([m["step"] for m in grpo_steps], [m.get("reward_mean", float("nan")) for m in grpo_steps], marker="o")
    a.set(title="GRPO: mean reward of the step's rollouts", xlabel="step", ylabel="reward")
    names = list(evals)
    b.errorbar(range(len(names)), [evals[n]["reward_mean"] for n in names],
               yerr=[evals[n]["reward_sem"] for n in names], marker="o", capsize=4)
    b.set_xticks(range(len(names)), names)
    b.set(title="held-out tasks: mean reward (± standard error)", ylabel="reward")
    fig.tight_layout()
    out = run_dir / "rewards.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def train(cfg) -> dict[str, Any]:
    """Run the configured stages; returns the final metrics. Prints progress and peak memory."""
    return asyncio.run(_train(cfg))


async def _train(cfg) -> dict[str, Any]:
    # One event loop for the whole job: the judge pool's limits and the engine client live in it.
    # Trainer calls block (they wait on the ranks), so they run in threads.
    from rl.resume import prepare_run_dir
    from rollout.engine.vllm_engine import cluster_has_gpus, start_engine_actor
    from rollout.worker import load_tokenizer
    from core.model import resolve_model_path

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")   # keep the console to the job's progress
    run_dir = prepare_run_dir(cfg)   # refuses to resume a run of another config; saves this one's
    if "grpo" in cfg.trainer.stage:
        from rl.config import check_grpo_sampling
        check_grpo_sampling(cfg)                            # fail fast, before anything starts
    ev = cfg.trainer.eval
    train_tasks = _load_tasks(cfg, cfg.tasks.train_split)
    eval_tasks = _load_tasks(cfg, cfg.tasks.eval_split) if ev.enabled else []
    counts = {"rollout": cfg.rollout.num_workers, "trainer": cfg.trainer.num_workers,
              "judge": cfg.judge.num_workers}
    demo_tasks, undemonstrated = choose_demo_tasks(train_tasks, cfg.trainer.sft.demo_fraction, cfg.seed)
    grpo_tasks = undemonstrated if cfg.trainer.grpo.tasks == "undemonstrated" else train_tasks
    if not grpo_tasks:
        raise ValueError("trainer.grpo.tasks=undemonstrated leaves GRPO no tasks: the teacher demonstrates "
                         "every train task; set trainer.sft.demo_fraction below 1")
    summary: dict[str, Any] = {"tasks": {"train": len(train_tasks), "demonstrated": len(demo_tasks),
                                         "grpo": len(grpo_tasks), "eval": len(eval_tasks)}}
    evals: dict[str, dict] = {}
    transfer: dict[str, dict] = {}                       # the same stages on the held-out family
    transfer_tasks = _load_tasks(cfg, ev.transfer_split) if ev.enabled and ev.transfer_split else []
    loop = asyncio.get_running_loop()
    started, wall = loop.time(), {}                      # wall-clock seconds per phase
    with PeakMemory(interval_s=2.0) as mem:
        init_ray(cfg.cluster, min_cpus=cpus_needed(cfg.cluster, counts))
        layout = make_layout(cfg.cluster, counts)
        model_path = str(resolve_model_path(cfg.model.path))
        tokenizer = load_tokenizer(model_path)
        pool = RolloutPool(cfg, None, cfg.rollout.num_workers, placement=lambda i: layout.options("rollout", i))
        judge = _judge(cfg, run_dir)
        engine = trainer = None
        try:
            # Without GPUs the engine starts (~30 s of imports and profiling) while the trainer sets up;
            # on GPUs after it, so that vLLM sizes its memory with the trainer's share already taken.
            if not cluster_has_gpus():
                engine = start_engine_actor(cfg)
            trainer = await asyncio.to_thread(_trainer, cfg, layout)
            start_step, start_version = (await asyncio.to_thread(trainer.resume_point)
                                         if cfg.trainer.checkpoint.resume == "auto" else (0, 0))
            resumed_in_grpo = trainer.stage == "grpo"
            run_sft = "sft" in cfg.trainer.stage and not resumed_in_grpo
            if engine is None:
                engine = start_engine_actor(cfg)
            if run_sft:   # the scripted teacher needs no engine: it plays while vLLM starts
                demos, m = await collect_demos(cfg, demo_tasks, pool, tokenizer, run_dir / "sft_demos.jsonl")
                print(f"[sft] {m['demos_total']} teacher demos, {m['demos_failed']} failed", flush=True)
            # Weight sync (disk, nccl or ipc by rollout.engine.weight_transfer) goes through push_weights.
            await asyncio.to_thread(trainer.init_weight_transfer, [engine])
            if resumed_in_grpo:   # the engine starts from the base weights: give it the checkpoint's
                await asyncio.to_thread(trainer.push_weights, [engine], start_version, run_dir / "weights" / "resumed")
            pool.set_engine(engine)

            async def held_out(stage: str, repeats: int = 0) -> None:
                """Evaluate a stage on the held-out split, and on the held-out family when configured."""
                t0 = loop.time()
                if eval_tasks:
                    evals[stage] = await evaluate(cfg, eval_tasks, pool, judge, cfg.seed,
                                                  run_dir / f"eval_{stage}.jsonl", repeats)
                    _report_eval(trainer, stage, evals[stage])
                if transfer_tasks:
                    transfer[stage] = await evaluate(cfg, transfer_tasks, pool, judge, cfg.seed,
                                                     run_dir / f"transfer_{stage}.jsonl", ev.transfer_repeats)
                    _report_eval(trainer, f"{stage}/transfer", transfer[stage])
                wall[f"eval_{stage}"] = loop.time() - t0

            wall["startup"] = loop.time() - started
            if eval_tasks and not resumed_in_grpo and trainer.sft_step == 0:
                await held_out("untrained", ev.untrained_repeats)
            if run_sft:
                t0 = loop.time()
                sft = await asyncio.to_thread(trainer.sft, demos)
                summary["sft"] = sft
                await asyncio.to_thread(trainer.save_checkpoint, trainer.sft_step)
                await asyncio.to_thread(trainer.push_weights, [engine], 0, run_dir / "weights" / "sft")
                wall["sft"] = loop.time() - t0
                await held_out("sft")
            if "grpo" in cfg.trainer.stage:
                t0 = loop.time()
                summary["grpo"] = await _grpo(cfg, grpo_tasks, pool, engine, trainer, judge, run_dir,
                                              start_step, start_version, eval_tasks)
                wall["grpo"] = loop.time() - t0
                await held_out("grpo")
            if cfg.trainer.checkpoint.export_hf:
                summary["final_hf"] = str(await asyncio.to_thread(trainer.export_hf, run_dir / "hf"))
        finally:
            pool.shutdown()
            if engine is not None:
                engine.kill()
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


def results_table(evals: dict[str, dict], transfer: dict[str, dict], wall: dict[str, float]) -> str:
    """The run's result at a glance: per stage, held-out reward (standard error), exact-fact accuracy,
    the same on the held-out family, and the stage's wall time."""
    rows = ["stage        held-out reward (SE)   exact facts   held-out family (SE)   exact facts   wall"]
    for stage in EVALUATED:
        if stage not in evals and stage not in transfer:
            continue
        cells = []
        for e in (evals.get(stage), transfer.get(stage)):
            cells += ([f"{e['reward_mean']:+.3f} ({e['reward_sem']:.3f})", f"{e['exact_fact_rate']:.0%}"]
                      if e else ["-", "-"])
        spent = wall.get(stage, 0.0) + wall.get(f"eval_{stage}", 0.0)
        rows.append(f"{stage:12s} {cells[0]:22s} {cells[1]:13s} {cells[2]:22s} {cells[3]:13s} {spent / 60:.1f} min")
    rows.append(f"total wall time {wall.get('total', 0.0) / 60:.1f} min (startup {wall.get('startup', 0.0) / 60:.1f} min)")
    return "\n".join(rows)


def _report_eval(trainer, name: str, e: dict) -> None:
    print(f"[eval] {name}: held-out reward {e['reward_mean']:.3f} (±{e['reward_std_between_passes']:.3f} "
          f"between {len(e['passes'])} passes; standard error {e['reward_sem']:.3f} over {e['episodes']} "
          f"episodes); exact facts in {e['exact_fact_rate']:.0%}", flush=True)
    trainer.tracker.log({k: v for k, v in e.items() if k != "passes"}, trainer.sft_step + trainer.step,
                        prefix=f"eval/{name}/")


async def _grpo(cfg, tasks, pool, engine, trainer, judge, run_dir: Path, start_step: int = 0,
                start_version: int = 0, eval_tasks: list | None = None) -> list[dict]:
    import random

    g = cfg.trainer.grpo
    tasks_by_id = {t.id: t for t in tasks}
    step_metrics: dict[int, dict] = {}
    samples: dict[int, list] = {}      # each step's judged batch, for the sample table

    async def generate(step: int, version: int) -> list:
        from rl.dynamic_sampling import replacement_order
        from rollout.worker import summarize

        # Seeded by the step, so a resumed run samples the same tasks (replacements included) as an
        # uninterrupted one.
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
            judged.append(await judge_batch(judge, tasks_by_id, flat))
            times["rollout_s"] += t1 - t0
            times["judge_s"] += clock() - t1
            drawn.extend(flat)
            restarts += m.get("worker_restarts", 0)
            return groups

        groups, counts = await sample_groups(batch, extra, run_round, g.tasks_per_step,
                                             dynamic=g.dynamic_sampling_max_extra > 0)
        flat = [t for grp in groups for t in grp]
        # reward_mean is the step's own tasks' (round 0): replacements are chosen for their spread,
        # and a curve over them would not compare with a run without dynamic sampling
        step_metrics[step] = {**summarize(drawn), "worker_restarts": restarts, **judged[0], **counts, **times,
                              "judge_masked": sum(j["judge_masked"] for j in judged),
                              "judged": sum(j["judged"] for j in judged)}
        samples[step] = drawn   # the sample table shows what the policy did, trained on or not
        return flat

    # Colocated on GPU in sync mode the engine sleeps while the trainer holds the devices
    # (with one-step off-policy generation overlaps training, so it stays awake).
    sleep = cfg.cluster.layout == "colocated" and cfg.cluster.sleep_engines and g.max_staleness == 0

    async def train_step(step: int, trajectories: list, version: int) -> dict:
        slept = sleep and await engine.sleep()
        metrics = await asyncio.to_thread(trainer.grpo_step, trajectories, version)
        if slept:
            await engine.wake_up()
        return metrics

    async def sync(version: int) -> None:
        await asyncio.to_thread(trainer.push_weights, [engine], version, run_dir / "weights" / "latest")

    async def after_step(rec) -> None:
        m = rec.metrics
        m.update(step_metrics.pop(rec.step, {}))
        m.update({f"time/{k}": v for k, v in vars(rec.times).items()})
        # One W&B step axis for the whole run: SFT steps first, then GRPO steps.
        trainer.tracker.log(m, trainer.sft_step + rec.step + 1, prefix="grpo/")
        batch = samples.pop(rec.step, [])
        if cfg.logging.sample_table_every and rec.step % cfg.logging.sample_table_every == 0:
            trainer.tracker.table("grpo/samples", SAMPLE_COLUMNS, sample_rows(batch, g.tasks_per_step),
                                  trainer.sft_step + rec.step + 1)
        if eval_tasks and g.eval_every and (rec.step + 1) % g.eval_every == 0 and rec.step + 1 < g.steps:
            _report_eval(trainer, f"step{rec.step + 1}", await evaluate(cfg, eval_tasks, pool, judge, cfg.seed))
        every = cfg.trainer.checkpoint.every
        if (every and (rec.step + 1) % every == 0) or rec.step + 1 == g.steps:
            await asyncio.to_thread(trainer.save_checkpoint, rec.step + 1)

    records = await run_steps(g.steps, generate=generate, train=train_step, sync=sync, after_step=after_step,
                              max_staleness=g.max_staleness, start_step=start_step, start_version=start_version)
    return [dict(step=r.step, **r.metrics) for r in records]
