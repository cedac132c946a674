"""GRPO step time, synchronous vs one-step off-policy, on the embedded default, in one run.

    python benchmarks/pipeline.py [--config tiny_cpu] [--steps 4] [--warmup 1] model.path=DIR [key=value ...]

Pass an SFT-trained policy as model.path: a Hugging Face directory, e.g. the `runs/NAME/weights/sft`
that `terminus train` writes after its SFT stage (copy it elsewhere first if that run may be
deleted). The untrained model's groups all have zero reward variance, so its GRPO steps train on
nothing and the train time is not representative; the script warns, with the count, whenever
steps trained on nothing. Keep the task overrides of the run that produced the policy (e.g.
tasks.generated.train_variants=..., trainer.sft.demo_fraction=..., trainer.grpo.tasks=undemonstrated):
GRPO samples the same tasks the driver would (the undemonstrated ones with that setting).

One Ray, one vLLM engine, one trainer group, one judge; the same GRPO loop the driver runs
(cluster.grpo.run_grpo, checkpoints included) first with trainer.grpo.max_staleness=0, then 1, on
the same step seeds (so the same tasks per step). Prints every step's times (so the warm-up is
visible), then the mean breakdown per mode (waiting for rollouts, of which generation+sandbox and
judging; training; weight sync; the rest: logging and checkpoints) and the ratio it is judged by:
async step time / sync step time (target <= 0.75), with what the overlap bought on this machine.

Means leave out each mode's first --warmup steps (default 1: the sync mode's first step pays for
the trainer's and the engine's warm-up, 30-45 s on the 2-core box; the async mode's first step has
no generation in flight to hide) and the async mode's last step (nothing to overlap with: it
trains alone), so both means are steady-state steps. Needs --steps >= warmup + 2.

Per-step times come from the loop's own StepRecords (cluster.pipeline.StepTimes, which include
after_step's checkpoint), which run_grpo returns.

Not measured here: rollout and trainer on separate CPU budgets (`--nodes 2` with
cluster.local.LocalCluster was considered and left out). Ray CPUs are bookkeeping, the vLLM engine
actor takes no placement resources (it lands wherever Ray puts it), and local Ray nodes on one
machine share the same cores anyway; a real measurement of disjoint budgets needs two machines
(docs/cluster.md, layouts: disaggregated).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

COLS = ("step_s", "wait_generate_s", "rollout_s", "judge_s", "train_s", "sync_s", "rest_s")


def _rows(metrics: list[dict], records: list | None) -> list[dict]:
    """One row per step: the step's times (from its StepRecord when available, else from the
    time/* metrics), generation/judging times and how many sequences it trained on."""
    times = {r.step: r.times for r in records or []}
    rows = []
    for m in metrics:
        t = times.get(m["step"])
        if t is not None:
            step_s, wait, train, sync = t.step_s, t.wait_generate_s, t.train_s, t.sync_s
        else:
            step_s = m.get("time/step_s", 0.0) + m.get("time/other_s", 0.0)
            wait, train, sync = (m.get(f"time/{k}", 0.0) for k in ("wait_generate_s", "train_s", "sync_s"))
        rows.append({"step": m["step"], "step_s": step_s, "wait_generate_s": wait,
                     "rollout_s": m.get("rollout_s", 0.0), "judge_s": m.get("judge_s", 0.0),
                     "train_s": train, "sync_s": sync, "rest_s": step_s - wait - train - sync,
                     "trained": int(m.get("trained", 0)),
                     "skipped": bool(m.get("skipped_update")) or int(m.get("trained", 0)) == 0})
    return rows


async def run(cfg, steps: int) -> tuple[dict[int, list[dict]], int]:
    """{staleness: per-step rows} for staleness 0 then 1, and the number of GRPO tasks."""
    from pathlib import Path

    from cluster.grpo import run_grpo
    from cluster.resources import cpus_needed, make_layout
    from cluster.rollout_pool import RolloutPool
    from core.raycluster import init_ray
    from evaluation.tasks_io import load_task_list
    from judge.pool import JudgePool
    from rl.group import TrainerGroup
    from rollout.engine import make_engine
    from rollout.teacher import choose_demo_tasks

    run_dir = Path(cfg.output_dir)
    tasks = load_task_list(cfg, cfg.tasks.train_split)
    if cfg.trainer.grpo.tasks == "undemonstrated":   # the tasks the driver's GRPO stage samples
        tasks = choose_demo_tasks(tasks, cfg.trainer.sft.demo_fraction, cfg.seed)[1]
        if not tasks:
            raise SystemExit("trainer.grpo.tasks=undemonstrated leaves no tasks: set trainer.sft.demo_fraction below 1")
    counts = {"rollout": cfg.rollout.num_workers, "trainer": cfg.trainer.num_workers, "judge": cfg.judge.num_workers}
    init_ray(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus, min_cpus=cpus_needed(cfg.cluster, counts))
    layout = make_layout(cfg.cluster, counts)
    pool = RolloutPool(cfg, None, cfg.rollout.num_workers, placement=lambda i: layout.options("rollout", i))
    trainer = TrainerGroup(cfg, layout=layout)
    judge = JudgePool(cfg.judge, run_dir=run_dir, layout=layout)
    engine = make_engine(cfg, actor=True, options=layout.options("engine", 0))
    trainer.init_weight_transfer([engine])
    pool.set_engine(engine)

    out = {}
    try:
        for staleness in (0, 1):
            cfg.trainer.grpo.max_staleness = staleness
            # Continue the policy versions of the previous mode, so staleness is measured correctly.
            version = int(getattr(trainer, "version", 0))
            records = await run_grpo(cfg, tasks, pool, [engine], trainer, judge, run_dir, 0, version)
            out[staleness] = _rows([dict(step=r.step, **r.metrics) for r in records], records)
    finally:
        pool.shutdown()
        engine.kill()
        trainer.shutdown()
        layout.remove()
    return out, len(tasks)


def _mean(rows: list[dict]) -> dict[str, float]:
    return {k: statistics.fmean(r[k] for r in rows) for k in COLS}


def _fmt(name: str, r: dict, tail: str = "") -> str:
    return (f"{name:8s} {r['step_s']:7.1f} {r['wait_generate_s']:9.1f} {r['rollout_s']:9.1f} {r['judge_s']:7.2f} "
            f"{r['train_s']:7.1f} {r['sync_s']:6.2f} {r['rest_s']:6.2f}{tail}")


HEADER = f"{'':8s} {'step':>7s} {'wait gen':>9s} {'(rollout':>9s} {'judge)':>7s} {'train':>7s} {'sync':>6s} {'rest':>6s}"


def report(res: dict[int, list[dict]], steps: int, warmup: int) -> None:
    used = {0: [r for r in res[0] if r["step"] >= warmup],
            1: [r for r in res[1] if warmup <= r["step"] < steps - 1]}
    print("\nper step (seconds; * = left out of the mean: warm-up, or the async drain step; (rollout judge) is the\n"
          "generation and judging of the step's own batch, which in async mode ran during the previous step)")
    for s, name in ((0, "sync"), (1, "async")):
        print(f"{name}\n{HEADER}  trained")
        for r in res[s]:
            mark = " " if any(u["step"] == r["step"] for u in used[s]) else "*"
            print(_fmt(f"{mark} {r['step']}", r, f"  {r['trained']:7d}"))
    mean = {s: _mean(used[s]) for s in (0, 1)}
    print(f"\nmean over steady-state steps (sync: steps {warmup}..{steps - 1}, async: steps {warmup}..{steps - 2})")
    print(f"{'mode':8s}" + HEADER[8:])
    for s, name in ((0, "sync"), (1, "async")):
        print(_fmt(name, mean[s], "   (seconds)"))
    sy, asy = mean[0], mean[1]
    ratio = asy["step_s"] / sy["step_s"]
    print(f"ratio async / sync step time = {ratio:.2f}  (target <= 0.75)")

    hidden = sy["wait_generate_s"] - asy["wait_generate_s"]
    slower_train = asy["train_s"] - sy["train_s"]
    slower_gen = asy["rollout_s"] - sy["rollout_s"]
    saved = sy["step_s"] - asy["step_s"]
    cpus = os.cpu_count()
    print(f"one-step-off overlap on this machine ({cpus} CPUs, generation and training on the same cores): "
          f"it hides {hidden:.1f} s/step of waiting for rollouts (sync {sy['wait_generate_s']:.1f} s -> async "
          f"{asy['wait_generate_s']:.1f} s), but training alongside generation takes {slower_train:+.1f} s/step "
          f"({sy['train_s']:.1f} -> {asy['train_s']:.1f} s) and generation {slower_gen:+.1f} s/step "
          f"({sy['rollout_s']:.1f} -> {asy['rollout_s']:.1f} s) as they compete for the cores: "
          f"net {saved:+.1f} s/step saved ({100 * saved / sy['step_s']:.0f}% of the sync step).")
    # Were generation and training never to slow each other down (disjoint CPU budgets), a step would
    # cost about the longer of the two, plus weight sync and the rest.
    ideal = (max(sy["wait_generate_s"], sy["train_s"]) + sy["sync_s"] + sy["rest_s"]) / sy["step_s"]
    if ratio > 0.9:
        verdict = "overlap buys little or nothing here: the two phases mostly take turns on the same cores"
    elif ratio > ideal + 0.05:
        verdict = "overlap pays, in part: what it hides is partly paid back in contention for the cores"
    else:
        verdict = "overlap pays about all it can: the phases barely slow each other (cores left idle by one are used by the other)"
    print(f"  -> {verdict}. Without contention (generation and training on separate machines) the sync "
          f"times predict a ratio of ~{ideal:.2f} (max(wait gen, train) + sync + rest, over the sync step).")

    for s, name in ((0, "sync"), (1, "async")):
        empty = [r["step"] for r in res[s] if r["skipped"]]
        if empty:
            print(f"WARNING: {len(empty)} of {len(res[s])} {name} steps trained on nothing (every group had zero "
                  f"reward variance; steps {empty}): their train time is not representative. Pass an SFT-trained "
                  f"policy as model.path (e.g. runs/NAME/weights/sft of a `terminus train` run).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny_cpu")
    ap.add_argument("--steps", type=int, default=4, help="GRPO steps per mode (>= warmup + 2)")
    ap.add_argument("--warmup", type=int, default=1, help="first steps of each mode left out of the means")
    ap.add_argument("overrides", nargs="*", help="config overrides, model.path=DIR (an SFT-trained policy) first of all")
    args = ap.parse_args()
    if args.warmup < 0 or args.steps < args.warmup + 2:
        ap.error(f"--steps must be at least --warmup + 2 = {args.warmup + 2}: each mode's mean needs a step after "
                 f"the warm-up, and the async mode's last step (which overlaps nothing) is left out too")
    from terminus.config import load_config
    cfg = load_config(args.config, [f"output_dir={tempfile.mkdtemp(prefix='terminus-bench-pipeline-')}",
                                    "logging.wandb_mode=disabled", f"trainer.grpo.steps={args.steps}",
                                    "trainer.checkpoint.every=1", "trainer.checkpoint.resume=never",
                                    *args.overrides])
    if not any(o.startswith("model.path=") for o in args.overrides):
        print(f"WARNING: no model.path=DIR given: timing the config's model ({cfg.model.path}), which is not "
              f"SFT-trained; its steps will likely train on nothing. Pass an SFT-trained policy "
              f"(e.g. model.path=runs/NAME/weights/sft).", flush=True)
    res, n_tasks = asyncio.run(run(cfg, args.steps))
    print(f"\n{args.steps} GRPO steps per mode ({args.warmup} warm-up), {cfg.trainer.grpo.tasks_per_step} tasks x "
          f"{cfg.trainer.grpo.rollouts_per_task} rollouts from {n_tasks} GRPO tasks, model {cfg.model.path}, "
          f"{os.cpu_count()} CPUs")
    report(res, args.steps, args.warmup)


if __name__ == "__main__":
    main()
