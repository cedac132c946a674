"""Held-out evaluation inside a training run, and the statistics a claimed improvement must beat.

    evaluate         mean judged reward on held-out tasks over several passes, with its noise
    EVALUATED        the held-out evaluations of a run, in order (untrained, sft, grpo)
    compare_evals    each stage against the one it starts from: difference, standard error (paired by task), z
    across_runs      run-to-run noise over several runs of one config (other seeds): paired margins
    results_table    the run's result at a glance; describe_eval: one evaluation as one console line
    stage_seconds, training_seconds   a stage's wall time with its evaluation; SFT + GRPO without them

`terminus train` (cluster.driver) runs `evaluate` through its rollout pool and judge pool;
`terminus compare` and benchmarks/learning.py read `across_runs`. Plots: evaluation.render.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from judge.pool import judge_batch
from judge.rules import exact_facts
from rollout.io import write_trajectories


async def evaluate(cfg, tasks: list, pool, judge, seed: int, out: Path | None = None,
                   repeats: int = 0) -> dict[str, Any]:
    """Mean judged reward on held-out tasks over `repeats` independent passes, with two measures of
    the noise a claimed improvement must beat: the spread of the pass means, and the standard error
    of the mean over the tasks (the spread of a few pass means is itself noisy and tends to be low;
    the standard error is the steadier figure). `repeats` = 0: trainer.eval.repeats."""
    ev = cfg.trainer.eval
    tasks = tasks[: ev.max_tasks] if ev.max_tasks else tasks
    by_id = {t.id: t for t in tasks}
    means, rewards, exact, task_ids, unjudged = [], [], [], [], 0
    for r in range(repeats or ev.repeats):
        groups, _ = await pool.run([(t, ev.samples_per_task) for t in tasks], seed=seed + 7919 * r)
        flat = [t for g in groups for t in g]
        m = await judge_batch(judge, by_id, flat)
        means.append(m["reward_mean"])
        unjudged += m["judge_masked"]
        judged = [t for t in flat if t.reward is not None]
        rewards += [t.reward for t in judged]
        task_ids += [t.task_id for t in judged]
        exact += [exact_facts(by_id[t.task_id], t) for t in judged]
        if r == 0 and out is not None:   # keep one pass's trajectories to read what the policy does
            write_trajectories(out, flat)
    return eval_stats(means, rewards, exact, unjudged, task_ids)


def eval_stats(means: list[float], rewards: list[float], exact: list[bool], unjudged: int = 0,
               task_ids: list[str] | None = None) -> dict[str, Any]:
    """An evaluation's figures from its pass means (NaN: a pass without one judged episode), its judged
    rewards (with each one's task id) and exact-fact checks; the episodes the judge could not score are
    counted, not averaged. The standard error counts tasks, not episodes: the episodes of one task share
    its difficulty, so each task's rewards are averaged first (`task_rewards`, kept so that two stages
    evaluated on the same tasks can be compared task by task: compare_evals)."""
    nan = float("nan")
    judged = [m for m in means if not math.isnan(m)]
    by_task: dict[str, list[float]] = {}
    for task, reward in zip(task_ids if task_ids is not None else range(len(rewards)), rewards):
        by_task.setdefault(str(task), []).append(reward)
    task_means = {t: statistics.fmean(rs) for t, rs in by_task.items()}
    sem = statistics.stdev(task_means.values()) / len(task_means) ** 0.5 if len(task_means) > 1 else nan
    return {"reward_mean": statistics.fmean(judged) if judged else nan,
            "reward_std_between_passes": statistics.pstdev(judged) if judged else nan,
            "reward_sem": sem, "episodes": len(rewards), "tasks": len(task_means), "unjudged": unjudged,
            "passes": means, "exact_fact_rate": statistics.fmean(exact) if exact else nan,
            **({"task_rewards": task_means} if task_ids is not None else {})}


EVALUATED = ("untrained", "sft", "grpo")            # the held-out evaluations of a run, in order
STAGES = (("sft", "untrained"), ("grpo", "sft"))   # (after, before): each stage against the one it starts from


def compare_evals(evals: dict[str, dict]) -> dict[str, dict]:
    """Each stage against the one before it (SFT vs untrained, GRPO vs SFT): the difference of the
    held-out means, its standard error, and how many standard errors the difference is (z).
    Both stages evaluated on the same tasks (a run's evaluations are): the standard error of the mean
    per-task difference (paired by task: a task's difficulty, shared by both stages, cancels, and the
    tasks are the unit of the sample). Otherwise sqrt(se_a^2 + se_b^2), as for independent evaluations."""
    out = {}
    for after, before in STAGES:
        if after in evals and before in evals:
            a, b = evals[after], evals[before]
            diff = a["reward_mean"] - b["reward_mean"]
            ta, tb = a.get("task_rewards"), b.get("task_rewards")
            paired = bool(ta and tb and ta.keys() == tb.keys() and len(ta) > 1)
            if paired:
                diffs = [ta[t] - tb[t] for t in ta]
                se = statistics.stdev(diffs) / len(diffs) ** 0.5
            else:
                se = math.hypot(a["reward_sem"], b["reward_sem"])
            out[f"{after}-{before}"] = {"diff": diff, "se": se, "z": _z(diff, se), "paired": paired}
    return out


def _z(diff: float, se: float) -> float:
    """How many standard errors `diff` is; NaN for no difference without noise (two stages that score
    -0.3 in every episode), infinite for a difference without noise."""
    if math.isnan(diff) or (diff == 0 and se == 0):
        return math.nan
    return diff / se if se > 0 else math.copysign(math.inf, diff)


def across_runs(runs: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """Run-to-run noise, from the held-out evaluations of several runs of one config (other seeds):
    per stage, the mean over runs and its spread between runs (sample standard deviation); per
    comparison, the margin (mean after - mean before), the noise it must beat (the larger of the two
    stages' spreads), their ratio, and the paired view: each run's own difference, its mean, spread,
    standard error, and in how many runs it is positive. `runs`: run name -> that run's `evals`."""
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


def results_table(evals: dict[str, dict], transfer: dict[str, dict], wall: dict[str, float]) -> str:
    """The run's result at a glance: per stage, held-out reward (standard error), exact-fact accuracy,
    the same on the held-out family, and the stage's wall time with its evaluation; then the run's
    wall time and its training's (SFT + GRPO, evaluations excluded: what the time target counts)."""
    rows = ["stage        held-out reward (SE)   exact facts   held-out family (SE)   exact facts   wall"]
    for stage in EVALUATED:
        if stage not in evals and stage not in transfer:
            continue
        cells = []
        for e in (evals.get(stage), transfer.get(stage)):
            cells += ([f"{e['reward_mean']:+.3f} ({e['reward_sem']:.3f})", f"{e['exact_fact_rate']:.0%}"]
                      if e else ["-", "-"])
        rows.append(f"{stage:12s} {cells[0]:22s} {cells[1]:13s} {cells[2]:22s} {cells[3]:13s} "
                    f"{stage_seconds(wall, stage) / 60:.1f} min")
    rows.append(f"total wall time {wall.get('total', 0.0) / 60:.1f} min (startup {wall.get('startup', 0.0) / 60:.1f} min; "
                f"training, SFT + GRPO: {training_seconds(wall) / 60:.1f} min)")
    return "\n".join(rows)


def stage_seconds(wall: dict[str, float], stage: str) -> float:
    """A stage's wall time (summary.json's wall_s) with its held-out evaluation."""
    return wall.get(stage, 0.0) + wall.get(f"eval_{stage}", 0.0)


def training_seconds(wall: dict[str, float]) -> float:
    """The run's training time: SFT + GRPO, evaluations excluded (what the time target counts)."""
    return wall.get("sft", 0.0) + wall.get("grpo", 0.0)


def describe_eval(name: str, e: dict) -> str:
    """One console line for a held-out evaluation."""
    return (f"[eval] {name}: held-out reward {e['reward_mean']:.3f} (±{e['reward_std_between_passes']:.3f} "
           f"between {len(e['passes'])} passes; standard error {e['reward_sem']:.3f} over {e.get('tasks', 0)} tasks, "
           f"{e['episodes']} episodes{_unjudged(e)}); exact facts in {e['exact_fact_rate']:.0%}")


def _unjudged(e: dict) -> str:
    return f", {e['unjudged']} unjudged" if e.get("unjudged") else ""
