"""Subcommands `eval`, `distill`, `serve` and `study` (see evaluation/ and docs/evaluation.md).

Module-level imports stay cheap: the work is imported inside each command.
"""
from __future__ import annotations

import argparse
import sys


def _common(p: argparse.ArgumentParser, split_default: str) -> None:
    from terminus.commands.args import add_config_args, add_task_args
    add_config_args(p)
    add_task_args(p, split_default)


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="evaluate subagents on held-out tasks: table, plots, JSON")
    _common(ev, "validation")
    ev.add_argument("--subagent", "-s", action="append", default=[], metavar="[LABEL=]SPEC",
                    help="tiny | base | HF checkpoint dir | openai:MODEL@URL | vllm-server:MODEL@URL | scripted "
                         "(repeatable; default: base = cfg.model.path)")
    ev.add_argument("--samples", type=int, default=1, help="episodes per task and subagent")
    ev.add_argument("--out", default="", help="output dir (default <output_dir>/eval)")
    ev.add_argument("--compare", nargs="+", default=[], metavar="RESULTS_JSON",
                    help="instead of running: merge earlier results.json files into one table + plots")
    ev.set_defaults(func=_eval)

    di = subparsers.add_parser("distill", help="teacher trajectories, judged and filtered -> SFT JSONL")
    _common(di, "train")
    di.add_argument("--teacher", default="scripted", metavar="SPEC",
                    help="scripted | openai:MODEL@URL | vllm-server:MODEL@URL | HF dir (default scripted)")
    di.add_argument("--out", default="", help="SFT JSONL (default <output_dir>/sft.jsonl); appended, resumable")
    di.add_argument("--threshold", type=float, default=0.7, help="keep trajectories whose judge score is >= this")
    di.add_argument("--samples", type=int, default=1, help="teacher episodes per task")
    di.add_argument("--concurrency", type=int, default=4, help="tasks in flight")
    di.add_argument("--rpm", type=int, default=None, help="teacher requests per minute (0 = unlimited)")
    di.add_argument("--tpm", type=int, default=None, help="teacher tokens per minute (0 = unlimited)")
    di.set_defaults(func=_distill)

    se = subparsers.add_parser("serve", help="serve the subagent as an MCP tool over stdio")
    from terminus.commands.args import add_config_args
    add_config_args(se)
    se.add_argument("--subagent", default="base", metavar="SPEC", help="as for eval (default base)")
    se.set_defaults(func=_serve)

    st = subparsers.add_parser("study", help="main agent with {terminal} vs {terminal, delegate_to_subagent}")
    _common(st, "validation")
    st.add_argument("--main", required=True, metavar="openai:MODEL@URL", help="the main agent (tool calling)")
    st.add_argument("--subagent", default="base", metavar="SPEC", help="as for eval (default base)")
    st.add_argument("--conditions", default="terminal,delegate", help="comma list of terminal, delegate")
    st.add_argument("--max-steps", type=int, default=12, help="main-agent steps per run")
    st.add_argument("--out", default="", help="write study.json here (default <output_dir>/study)")
    st.set_defaults(func=_study)


def _setup(args):
    from terminus.config import load_config
    from evaluation.tasks_io import load_task_list
    cfg = load_config(args.config, args.overrides)
    return cfg, load_task_list(cfg, args.split, args.tasks_file, args.limit)


def _eval(args) -> int:
    import asyncio
    from pathlib import Path

    from evaluation.evaluate import compare, run_eval
    from evaluation.subagents import parse_subagent
    if args.compare:
        print(compare(args.compare, Path(args.out or "eval_compare")))
        return 0
    cfg, tasks = _setup(args)   # user errors (SubagentError, TaskListError, ...) reach terminus.cli.main
    specs = [parse_subagent(s, cfg.model.path) for s in (args.subagent or ["base"])]
    out = Path(args.out or Path(cfg.output_dir) / "eval")
    results = asyncio.run(run_eval(cfg, specs, tasks, out, samples=args.samples))
    print((out / "table.md").read_text(), end="")
    for name, r in results["subagents"].items():
        for f in r["summary"]["failures"]:
            print(f"failed episode ({name}): {f['task_id']}: {f['error']}", file=sys.stderr)
    print(f"wrote {out}/results.json, table.md, quality.png, failures.png, cost.png")
    return 0


def _distill(args) -> int:
    import asyncio
    import json
    from pathlib import Path

    from evaluation.distill import distill
    from evaluation.subagents import parse_subagent
    cfg, tasks = _setup(args)
    if args.rpm is not None:
        cfg.rollout.engine.requests_per_minute = args.rpm
    if args.tpm is not None:
        cfg.rollout.engine.tokens_per_minute = args.tpm
    out = Path(args.out or Path(cfg.output_dir) / "sft.jsonl")
    stats = asyncio.run(distill(cfg, parse_subagent(args.teacher, cfg.model.path), tasks, out,
                                threshold=args.threshold, samples=args.samples, concurrency=args.concurrency))
    print(json.dumps(stats, indent=1))
    print(f"wrote {out}")
    return 1 if stats["failed_tasks"] and not stats["kept"] and stats["episodes"] else 0


def _serve(args) -> int:
    import asyncio

    from terminus.config import load_config
    from evaluation.serve import serve_stdio
    from evaluation.subagents import parse_subagent
    cfg = load_config(args.config, args.overrides)
    asyncio.run(serve_stdio(cfg, parse_subagent(args.subagent, cfg.model.path)))
    return 0


def _study(args) -> int:
    import asyncio
    import json
    from pathlib import Path

    from evaluation import study
    from core.errors import UserError
    from evaluation.subagents import SubagentError, open_subagent, parse_subagent, preflight
    from core.openai_api import Endpoint
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    bad = [c for c in conditions if c not in study.CONDITIONS]
    if bad or not conditions:
        raise UserError(f"--conditions: {bad or conditions} not among {', '.join(study.CONDITIONS)}")
    cfg, tasks = _setup(args)
    main = parse_subagent(args.main)
    if main.kind != "openai":
        raise SubagentError("--main must be openai:MODEL@URL (an endpoint with tool calling)")
    sub = parse_subagent(args.subagent, cfg.model.path)

    async def go():
        await preflight(main, cfg)
        await preflight(sub, cfg)
        client = Endpoint.from_config(cfg.rollout.engine, main.model, base_url=main.base_url)
        try:
            async with open_subagent(sub, cfg, tasks=tasks) as (engine, tokenizer):
                runner = study.episode_subagent(engine, tokenizer, cfg.rollout)
                return await study.run_study([study.StudyTask.from_task(t) for t in tasks], client,
                                             cfg.rollout.sandbox, runner, conditions, args.max_steps,
                                             on_result=lambda r: print(f"{r.task_id} [{r.condition}]: "
                                                                       f"{'ok' if r.success else 'fail'}"
                                                                       f"{' ERROR ' + r.error if r.error else ''}",
                                                                       file=sys.stderr))
        finally:
            await client.close()
    results = asyncio.run(go())
    data = study.results_json(results)
    out = Path(args.out or Path(cfg.output_dir) / "study")
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(data, indent=1))
    print(study.study_table(data["summary"]))
    print(f"wrote {out}/study.json")
    return 0
