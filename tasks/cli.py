"""`terminus tasks list|show|build`: look at a corpus, or (re)build the built-in one."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("tasks", help="list, show or build task corpora")
    tsub = p.add_subparsers(dest="tasks_cmd", required=True)
    ls = tsub.add_parser("list", help="one line per task of a split")
    ls.add_argument("--corpus", default="builtin", help="'builtin' or a corpus directory")
    ls.add_argument("--split", default="train", choices=("train", "validation", "test"))
    ls.set_defaults(func=_list)
    show = tsub.add_parser("show", help="a task in full (request, ground truth, reference)")
    show.add_argument("task_id")
    show.add_argument("--corpus", default="builtin")
    show.set_defaults(func=_show)
    build = tsub.add_parser("build", help="build the built-in corpus into the cache (or --out) and summarize it")
    build.add_argument("--out", default="", help="cache directory (default: ~/.cache/terminus/tasks)")
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
    from tasks.corpus import ensure_builtin
    path = ensure_builtin(args.out)
    print(f"built-in corpus: {path}")
    print((path / "corpus.json").read_text())
    return 0
