"""`terminus train | submit | status | logs | stop`: run the end-to-end job here, or on a Ray cluster."""
from __future__ import annotations

import argparse
import os
import sys


def _env_pairs(pairs: list[str]) -> dict[str, str]:
    from core.errors import UserError

    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise UserError(f"--env {p!r} is not of the form KEY=VALUE")
        out[k] = v
    return out


def _train(args: argparse.Namespace) -> int:
    from cluster.driver import train
    from rl.resume import preflight
    from terminus.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:   # every check the job makes before it starts, but model.path need not be here
        from cluster.driver import check_engines_config
        from cluster.plan import ClusterSpec, make_plan, render
        from core.model import model_shape
        from rl.config import check_grpo_sampling

        check_engines_config(cfg)
        if "grpo" in cfg.trainer.stage:
            check_grpo_sampling(cfg)
        shape = model_shape(cfg.model.path)
        spec = ClusterSpec(nodes=args.nodes, gpus=args.gpus, gpu_memory_gib=args.gpu_memory_gib)
        print(render(make_plan(cfg, shape, spec), cfg, shape))
        return 0
    preflight(cfg)
    train(cfg)   # user errors reach terminus.cli.main
    return 0


def _submit(args: argparse.Namespace) -> int:
    from cluster import jobs
    from terminus.config import load_config

    if args.entrypoint:
        entrypoint = args.entrypoint
    else:
        if not args.config:
            from core.errors import UserError
            raise UserError("submit needs -c/--config NAME_OR_FILE (or --entrypoint for any other command)")
        from cluster.driver import check_engines_config
        cfg = load_config(args.config, args.overrides)
        check_engines_config(cfg)   # fail here, not minutes later on the cluster
        overrides = list(args.overrides)
        absolute = jobs.absolute_output_dir(cfg.output_dir, os.getcwd())
        if absolute:
            print(f"output_dir={cfg.output_dir} is relative: the job writes to {absolute} (resolved against this "
                  f"directory; every node must mount it at that path)", file=sys.stderr)
            overrides.append(f"output_dir={absolute}")
        entrypoint = jobs.train_entrypoint(args.config, overrides, python=args.python)
    base_env = jobs.read_runtime_env(args.runtime_env) if args.runtime_env else None
    job_id = jobs.submit(entrypoint, address=args.address, env=_env_pairs(args.env), submission_id=args.job_id,
                         base_env=base_env)
    print(job_id, flush=True)
    if not args.wait:
        print(f"follow it with: terminus logs {job_id} --follow --address {jobs.resolve_address(args.address)}",
              file=sys.stderr)
        return 0
    jobs.follow(job_id, args.address)
    final = jobs.wait(job_id, args.address)
    print(f"job {job_id}: {final}", file=sys.stderr)
    return 0 if final == "SUCCEEDED" else 1


def _status(args: argparse.Namespace) -> int:
    from cluster import jobs

    s, msg = jobs.status(args.job_id, args.address)
    print(f"{s}\t{msg}" if msg else s)
    return 0


def _logs(args: argparse.Namespace) -> int:
    from cluster import jobs

    if args.follow:
        jobs.follow(args.job_id, args.address)
    else:
        print(jobs.logs(args.job_id, args.address), end="")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from cluster import jobs

    was_running = jobs.stop(args.job_id, args.address)
    print(f"stop requested for {args.job_id}" if was_running else f"{args.job_id} was not running")
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from evaluation.heldout import EVALUATED, across_runs

    runs = {}
    for d in args.runs:
        f = Path(d) / "summary.json"
        if not f.exists():
            from core.errors import UserError
            raise UserError(f"{f} not found: give run directories of finished `terminus train` runs")
        runs[d] = json.loads(f.read_text()).get("evals", {})
    if len(runs) < 2:
        from core.errors import UserError
        raise UserError("give two or more runs (the same config, other seeds): noise between runs needs at least two")
    out = across_runs(runs)
    print(f"{'run':24s} " + " ".join(f"{s:>10s}" for s in EVALUATED))
    for name, e in runs.items():
        print(f"{name:24s} " + " ".join(f"{e[s]['reward_mean']:+10.3f}" if s in e else f"{'-':>10s}"
                                        for s in EVALUATED))
    for name, st in out["stages"].items():
        print(f"[runs] {name}: mean {st['mean']:+.3f} over {st['runs']} runs, spread between runs {st['std_between_runs']:.3f}")
    for name, c in out["comparisons"].items():
        print(f"[runs] {name}: margin {c['margin']:+.3f} = {c['margin_over_noise']:.1f} x the run-to-run noise "
              f"({c['noise']:.3f}); per run {c['diff_mean']:+.3f} +- {c['diff_std']:.3f} (SE {c['diff_sem']:.3f}), "
              f"positive in {c['positive']} of {c['runs']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, **out}, indent=1))
    return 0


def register(sub) -> None:
    from terminus.commands.args import add_config_args

    if "train" not in sub.choices:
        t = sub.add_parser("train", help="train end to end (SFT then GRPO, by trainer.stage) on this machine / Ray")
        add_config_args(t)
        t.add_argument("--dry-run", action="store_true",
                       help="load and check the config, print the placement, per-GPU memory estimates and the "
                            "context budget for the cluster below (cluster/plan.py); start nothing")
        t.add_argument("--nodes", type=int, default=1, help="--dry-run: nodes of the cluster (default 1)")
        t.add_argument("--gpus", type=int, default=8, help="--dry-run: GPUs in all, split over the nodes (default 8)")
        t.add_argument("--gpu-memory-gib", type=float, default=80.0, help="--dry-run: memory of one GPU (default 80)")
        t.set_defaults(func=_train)

    cmp = sub.add_parser("compare", help="run-to-run noise: held-out rewards of several runs of one config (seeds)")
    cmp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output_dir of finished `terminus train` runs")
    cmp.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    cmp.set_defaults(func=_compare)

    addr = {"help": "Ray job server, e.g. http://HEAD:8265 (default: $RAY_ADDRESS or http://127.0.0.1:8265)"}
    s = sub.add_parser("submit", help="submit `terminus train` as a Ray job; prints the job id")
    s.add_argument("--address", **addr)
    add_config_args(s, default=None)   # no default: a job on a cluster names its config
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="env var for the job (repeatable)")
    s.add_argument("--runtime-env", metavar="FILE",
                   help="a Ray runtime environment (YAML/JSON: pip, uv, conda, image_uri, env_vars, ...) for the job; "
                        "the repository stays its working dir unless FILE names one")
    s.add_argument("--python", default="python", help="the python on the cluster nodes (default: python)")
    s.add_argument("--entrypoint", help="run this shell command instead of `terminus train`")
    s.add_argument("--job-id", help="choose the job id (default: Ray makes one)")
    s.add_argument("--wait", action="store_true", help="follow the logs until the job ends; exit 1 unless it succeeded")
    s.set_defaults(func=_submit)

    for name, func, text in (("status", _status, "print a job's status"), ("logs", _logs, "print a job's logs"),
                             ("stop", _stop, "stop a job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id", metavar="JOB")
        p.add_argument("--address", **addr)
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true")
        p.set_defaults(func=func)
