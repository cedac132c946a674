"""`terminus tasks list|show|build`: look at a corpus, or (re)build the built-in one."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list, show or build task corpora")
    tsub = p.add_subparsers(dest="tasks_cmd", required=True)
    ls = tsub.add_parser("list", help="one line per task of a split")
    ls.add_argument("--corpus", default="builtin", help="'builtin', 'generated' (default settings) or a corpus directory")
    ls.add_argument("--split", default="train", choices=("train", "validation", "test"))
    ls.set_defaults(func=_list)
    show = tsub.add_parser("show", help="a task in full (request, ground truth, reference)")
    show.add_argument("task_id")
    show.add_argument("--corpus", default="builtin")
    show.set_defaults(func=_show)
    build = tsub.add_parser("build", help="build the built-in corpus (or, with --manifest, a corpus of real "
                            "projects) and summarize it")
    build.add_argument("--out", default="", help="output directory (built-in default: ~/.cache/terminus/tasks)")
    build.add_argument("--manifest", default="", help="JSONL manifest of real projects (tasks/manifests/default.jsonl)")
    build.add_argument("--jobs", type=int, default=2, help="projects built concurrently")
    build.set_defaults(func=_build)


def _list(args) -> int:
    from tasks import load_tasks
    for t in load_tasks(args.corpus, args.split):
        print(f"{t.id:40s} {t.language:11s} {t.category:11s} exit={t.ground_truth.exit_status}  {t.request}")
    return 0


def _show(args) -> int:
    from dataclasses import asdict

    from tasks import load_tasks
    for split in ("train", "validation", "test"):
        for t in load_tasks(args.corpus, split):
            if t.id == args.task_id:
                print(json.dumps(asdict(t), indent=2))
                return 0
    print(f"no task {args.task_id!r} in corpus {args.corpus}; `terminus tasks list` shows the ids")
    return 2


def _build(args) -> int:
    if args.manifest:
        return _build_manifest(args)
    from tasks.corpus import ensure_builtin
    path = ensure_builtin(args.out)
    print(f"built-in corpus: {path}")
    print((path / "corpus.json").read_text())
    return 0


def _build_manifest(args) -> int:
    import asyncio
    from pathlib import Path

    from tasks.manifest import load_manifest
    from tasks.real import build_corpus
    if not args.out:
        print("--out DIR is required with --manifest (a new directory for the corpus)")
        return 2
    entries, problems = load_manifest(args.manifest)
    for p in problems:
        print(f"manifest line {p.line}: EXCLUDED ({p.reason}): {p.entry}")
    out = Path(args.out).expanduser().resolve()
    if (out / "COMPLETE").exists():
        print(f"{out} already holds a complete corpus; pick a new --out or delete it")
        return 2
    outcomes = asyncio.run(build_corpus(entries, out, jobs=args.jobs, progress=lambda s: print(s, flush=True)))
    summary = json.loads((out / "corpus.json").read_text())
    print(json.dumps({k: summary[k] for k in ("tasks", "projects", "by_split", "by_language", "by_category")},
                     indent=2))
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
