"""`terminus rollout`: run the configured model over tasks and write trajectories.

    terminus rollout -c tiny_cpu --split validation --out runs/val.jsonl --n 4 [key=value ...]
    terminus rollout -c tiny_cpu --tasks tasks.jsonl --out runs/t.parquet

--split names a split of the configured corpus (tasks.corpus); --tasks FILE a JSONL file of Task
records instead. The engine is rollout.engine.kind: vllm (engine + worker Ray actors on a local
Ray, or cluster.address) or openai (an endpoint; no Ray). JSONL is written as episodes finish;
.parquet at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys


def register(sub) -> None:
    from terminus.commands.args import add_config_args, add_task_args
    p = sub.add_parser("rollout", help="run a model over tasks and write trajectories (JSONL/parquet)")
    add_config_args(p)
    add_task_args(p, "validation")
    p.add_argument("--out", required=True, help="output file: .jsonl or .parquet")
    p.add_argument("--n", type=int, default=1, help="episodes per task (default 1)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: config seed)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from terminus.config import load_config
    from core.errors import UserError
    from evaluation.tasks_io import load_task_list
    from core.model import resolve_model_path
    cfg = load_config(args.config, args.overrides)
    if args.n < 1:
        raise UserError(f"--n {args.n}: episodes per task must be at least 1")
    tasks = load_task_list(cfg, args.split, args.tasks_file, args.limit)
    resolve_model_path(cfg.model.path)   # a bad model.path fails here, before Ray or an engine starts
    seed = cfg.seed if args.seed is None else args.seed
    metrics = asyncio.run(_run(cfg, [(t, args.n) for t in tasks], args.out, seed))
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0 if metrics["episodes"] else 1


async def _run(cfg, requests, out: str, seed: int) -> dict:
    from tqdm import tqdm

    from rollout.io import TrajectoryWriter, is_parquet, write_trajectories
    from rollout.worker import summarize
    # An endpoint that does not answer fails here, before the progress bar or the output file.
    openai = await _open_openai(cfg) if cfg.rollout.engine.kind == "openai" else None
    done: list = []
    writer = None if is_parquet(out) else TrajectoryWriter(out)
    bar = tqdm(total=sum(n for _, n in requests), unit="episode", desc="rollout", file=sys.stderr)

    def record(trajs) -> None:
        for t in trajs:
            done.append(t)
            if writer:
                writer.write(t)
        bar.update(len(trajs))
        bar.set_postfix(failed=sum(t.error is not None for t in done),
                        reports=sum(t.finish_reason == "report" for t in done))

    try:
        if openai:
            await _run_openai(cfg, *openai, requests, seed, record)
        else:
            await _run_ray(cfg, requests, seed, record)
    finally:
        bar.close()
        if writer:
            writer.close()
    if is_parquet(out):
        write_trajectories(out, done)
    return summarize(done)


async def _open_openai(cfg) -> tuple:
    """The endpoint engine and its tokenizer, once the endpoint answers (EndpointError otherwise)."""
    from core.model import resolve_model_path
    from rollout.engine import make_engine
    from rollout.worker import load_tokenizer
    tokenizer = load_tokenizer(str(resolve_model_path(cfg.model.path)))
    engine = make_engine(cfg, tokenizer)
    try:
        await engine.client.check()
    except BaseException:
        await engine.close()
        raise
    return engine, tokenizer


async def _run_openai(cfg, engine, tokenizer, requests, seed, record) -> None:
    from rollout.worker import run_requests
    try:
        await run_requests(requests, engine, tokenizer, cfg.rollout, seed=seed,
                           max_model_len=cfg.model.max_model_len, on_episode=lambda t: record([t]))
    finally:
        await engine.close()


async def _run_ray(cfg, requests, seed, record) -> None:
    import ray

    from cluster.rollout_pool import RolloutPool
    from core.raycluster import init_ray
    from rollout.engine import make_engine
    started = init_ray(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus, log_to_driver=False)
    engine = pool = None
    try:
        engine = make_engine(cfg, actor=True)
        pool = RolloutPool(cfg, engine, cfg.rollout.num_workers)
        print(f"engine: {await engine.info()}", file=sys.stderr)
        # One call per (task, n) so groups are written as they finish; workers take turns.
        async for _, group in pool.stream(requests, seed):
            record(group)
    finally:
        if pool is not None:
            pool.shutdown()
        if engine is not None:
            engine.kill()
        if started:
            ray.shutdown()
