"""`terminus tasks list|show|build|validate`: look at a corpus, build one, or check it through episodes.

Like every config command they take `-c/--config` and `key=value` overrides; the corpus is the
config's `tasks.corpus` (and `tasks.generated`, `tasks.cache_dir`)."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub) -> None:
    from terminus.commands.args import add_config_args

    p = sub.add_parser("tasks", help="list, show, build or validate the task corpus of a config (tasks.corpus)")
    tsub = p.add_subparsers(dest="tasks_cmd", required=True)
    corpus = ("CORPUS (builtin, generated or a corpus directory) before the overrides is short for "
              "tasks.corpus=CORPUS")
    ls = tsub.add_parser("list", help="one line per task of a split of tasks.corpus", description=corpus)
    add_config_args(ls)
    ls.add_argument("--split", default="train", choices=("train", "validation", "test"))
    ls.set_defaults(func=_list)
    show = tsub.add_parser("show", help="a task of tasks.corpus in full (request, ground truth, reference)")
    show.add_argument("task_id")
    add_config_args(show)
    show.set_defaults(func=_show)
    build = tsub.add_parser("build", help="build tasks.corpus (builtin or generated), or with --manifest a corpus "
                            "of real projects, and summarize it")
    add_config_args(build)
    build.add_argument("--out", default="", help="output directory (builtin/generated default: tasks.cache_dir, "
                       "else ~/.cache/terminus/tasks; required with --manifest)")
    build.add_argument("--manifest", default="", help="JSONL manifest of real projects (tasks/manifests/default.jsonl); "
                       "facts are kept where rollout.sandbox.output_limit_bytes of output shows them")
    build.add_argument("--jobs", type=int, default=2, help="projects built at once by a local build (its Ray's CPUs)")
    build.add_argument("--address", default="", help="Ray cluster to build on (e.g. 10.0.0.1:6379); every node "
                       "must see --out at the same path. Default: a private local Ray")
    build.add_argument("--cpus-per-project", type=float, default=1.0, help="Ray CPUs each project's build reserves")
    build.add_argument("--apt-install", action="store_true",
                       help="install the Debian packages that projects built by their Debian packaging need (their "
                            "Build-Depends, e.g. a Java library's jars; as root); without it such projects are "
                            "excluded, naming them")
    build.set_defaults(func=_build)
    val = tsub.add_parser("validate", help="replay the reference solutions of tasks.corpus through the episode path "
                          "and check that every recorded fact is reproduced", description=corpus)
    add_config_args(val)
    val.add_argument("--sample", type=int, default=0, help="validate N tasks drawn at random (default: all)")
    val.add_argument("--seed", type=int, default=0)
    val.add_argument("--split", default="", choices=("", "train", "validation", "test"), help="default: every split")
    val.add_argument("--jobs", type=int, default=2, help="episodes run at once")
    val.add_argument("--observation-cap", type=int, default=0,
                     help="episode output cap (default: the corpus's, from corpus.json; generated: "
                          "tasks.generated.observation_cap; else 16384)")
    val.add_argument("--command-timeout", type=float, default=300.0, help="seconds per command")
    val.set_defaults(func=_validate)


def _config(args):
    """The command's config; a leading CORPUS (no '=') among the overrides is tasks.corpus=CORPUS, so
    `terminus tasks validate ~/corpus/mine` reads as it always did."""
    from terminus.config import load_config

    overrides = list(args.overrides)
    if overrides and "=" not in overrides[0]:
        overrides.append(f"tasks.corpus={Path(overrides.pop(0)).expanduser()}")
    return load_config(args.config, overrides)


def _list(args) -> int:
    from evaluation.tasks_io import corpus_tasks
    for t in corpus_tasks(_config(args).tasks, args.split):
        print(f"{t.id:40s} {t.language:11s} {t.category:11s} exit={t.ground_truth.exit_status}  {t.request}")
    return 0


def _show(args) -> int:
    from dataclasses import asdict

    from evaluation.tasks_io import corpus_tasks
    cfg = _config(args)
    for split in ("train", "validation", "test"):
        for t in corpus_tasks(cfg.tasks, split):
            if t.id == args.task_id:
                print(json.dumps(asdict(t), indent=2))
                return 0
    from core.errors import UserError
    raise UserError(f"no task {args.task_id!r} in corpus {cfg.tasks.corpus}; `terminus tasks list` shows the ids")


def _build(args) -> int:
    cfg = _config(args)
    if args.manifest:
        return _build_manifest(args, cfg.rollout.sandbox.output_limit_bytes)
    from omegaconf import OmegaConf

    from core.errors import UserError
    from evaluation.validate import validate_sample
    from tasks.corpus import ensure_builtin, ensure_generated
    cache = args.out or cfg.tasks.cache_dir
    if cfg.tasks.corpus == "builtin":
        path = ensure_builtin(cache)
    elif cfg.tasks.corpus == "generated":
        path = ensure_generated(OmegaConf.to_object(cfg.tasks.generated), cache, validate=validate_sample)
    else:
        raise UserError(f"tasks.corpus={cfg.tasks.corpus} is a corpus directory, which is built already: build one "
                        f"from real projects with --manifest FILE --out DIR, or pick tasks.corpus=builtin|generated")
    print(f"{cfg.tasks.corpus} corpus: {path}")
    summary = path / "corpus.json"
    print(summary.read_text() if summary.is_file() else
          ", ".join(f"{s}: {len((path / f'{s}.jsonl').read_text().splitlines())} tasks"
                    for s in ("train", "validation", "test")))
    return 0


def _build_manifest(args, observation_cap: int) -> int:
    from tasks.build import build_corpus, summary_table
    from tasks.manifest import load_manifest
    if not args.out:
        from core.errors import UserError
        raise UserError("--out DIR is required with --manifest (a new directory, or an earlier build's to resume "
                        "or update it)")
    entries, problems = load_manifest(args.manifest)
    for p in problems:
        print(f"manifest line {p.line}: EXCLUDED ({p.reason}): {p.entry}")
    out = Path(args.out).expanduser().resolve()
    if (out / ".projects").is_dir():
        print(f"{out}: reusing the projects an earlier build finished (unchanged manifest line and builder)")
    print(f"observation cap {observation_cap} bytes (rollout.sandbox.output_limit_bytes of the config)", flush=True)
    outcomes = build_corpus(entries, out, address=args.address, jobs=args.jobs, cpus_per_project=args.cpus_per_project,
                            observation_cap=observation_cap, apt_install=args.apt_install,
                            progress=lambda s: print(s, flush=True))
    summary = json.loads((out / "corpus.json").read_text())
    print(summary_table(summary))
    print(summary_line(summary))
    print(f"excluded: {len(problems)} bad manifest lines, "
          f"{sum(1 for o in outcomes if o.excluded)} projects (reasons above and in corpus.json)")
    return 0


def summary_line(summary: dict) -> str:
    """One line with the totals a corpus is judged by: tasks, projects, languages, per split, and
    whether any project straddles two splits."""
    by_split = summary.get("projects_by_split", {})
    splits = ", ".join(f"{s} {summary['by_split'].get(s, 0)} tasks / {len(by_split.get(s, []))} projects"
                       for s in ("train", "validation", "test"))
    seen: dict[str, str] = {}
    shared = sorted({p for s, ps in by_split.items() for p in ps if seen.setdefault(p, s) != s})
    return (f"corpus: {summary['tasks']} tasks, {summary['projects']} projects, "
            f"{len(summary['by_language'])} languages ({', '.join(sorted(summary['by_language']))}); {splits}; "
            + (f"projects in two splits: {', '.join(shared)}" if shared else "no project in two splits"))


def _validate(args) -> int:
    import asyncio

    from sandbox.config import SandboxConfig
    from rollout.worker import load_tokenizer
    from evaluation.tasks_io import corpus_tasks
    from tasks.corpus import CorpusError, built_observation_cap
    from evaluation.validate import sample_tasks, validate_tasks
    from core.model import resolve_model_path

    tc = _config(args).tasks
    splits = [args.split] if args.split else ["train", "validation", "test"]
    tasks = []
    for split in splits:
        try:
            tasks += corpus_tasks(tc, split)
        except CorpusError as e:   # an empty split is fine when validating every split
            if "is empty" not in str(e) or args.split:
                raise
    if tc.corpus in ("builtin", "generated"):
        recorded = tc.generated.observation_cap if tc.corpus == "generated" else 0
    else:
        recorded = built_observation_cap(Path(tc.corpus))
    cfg = SandboxConfig(output_limit_bytes=args.observation_cap or recorded or SandboxConfig().output_limit_bytes,
                        command_timeout_s=args.command_timeout)
    chosen = sample_tasks(tasks, args.sample, args.seed)
    print(f"validating {len(chosen)} of {len(tasks)} tasks (observation cap {cfg.output_limit_bytes} bytes)", flush=True)

    def progress(check, done: int, total: int) -> None:
        print(f"[{done}/{total}] {check.task_id}: " + ("ok" if check.ok else "FAILED: " + " | ".join(check.problems)),
              flush=True)
    checks = asyncio.run(validate_tasks(chosen, cfg, load_tokenizer(str(resolve_model_path("tiny"))),
                                        teacher_tasks=tasks, concurrency=args.jobs, progress=progress))
    failed = [c for c in checks if not c.ok]
    unverified = sum(c.unverified for c in checks)
    print(f"validated {len(checks)} tasks: {len(checks) - len(failed)} reproduce their ground truth, {len(failed)} do not"
          + (f"; {unverified} facts have no recorded evidence (checked in the report only)" if unverified else ""))
    return 1 if failed else 0
