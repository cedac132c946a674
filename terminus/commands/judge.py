"""`terminus judge calibrate|make-calibration`: measure a judge config against a labelled set, or
(re)build the built-in calibration set from real runs of the built-in tasks."""
from __future__ import annotations

import json


def register(sub) -> None:
    from terminus.commands.args import add_config_args

    p = sub.add_parser("judge", help="judge quality: calibration set and agreement")
    jsub = p.add_subparsers(dest="judge_cmd", required=True)
    cal = jsub.add_parser("calibrate", help="agreement (pairwise accuracy, Spearman) and self-consistency "
                                            "of the config's judge on a labelled set")
    add_config_args(cal)
    cal.add_argument("--set", dest="set_path", default="", help="JSONL calibration set "
                     "(default: judge/calibration/builtin.jsonl)")
    cal.add_argument("--no-repeat", action="store_true", help="skip the second pass (self-consistency)")
    cal.set_defaults(func=_calibrate)
    mk = jsub.add_parser("make-calibration", help="run each built-in task's reference faithfully and with "
                                                  "controlled corruptions in real sandboxes; write JSONL")
    add_config_args(mk)
    mk.add_argument("--out", required=True)
    mk.add_argument("--splits", default="train,validation,test")
    mk.set_defaults(func=_make)


def _calibrate(args) -> int:
    import copy

    from judge.calibrate import DEFAULT_SET, agreement_report, as_batch, read_set
    from judge.pool import JudgePool
    from terminus.config import load_config

    cfg = load_config(args.config, args.overrides)
    examples = read_set(args.set_path or DEFAULT_SET)   # CalibrationError: one line from terminus.cli.main
    tasks, trajs = as_batch(examples)
    jcfg = copy.deepcopy(cfg.judge)
    jcfg.cache_dir = ""          # calibration measures the judge itself: never answer from a cache
    first = JudgePool(jcfg).score(tasks, copy.deepcopy(trajs))
    repeat = None if args.no_repeat else [t.reward for t in JudgePool(jcfg).score(tasks, copy.deepcopy(trajs))]
    report = agreement_report(examples, [t.reward for t in first], repeat)
    report["judge"] = jcfg.backend
    print(json.dumps(report, indent=2))
    return 0


def _make(args) -> int:
    from pathlib import Path

    from transformers import AutoTokenizer

    from evaluation.tasks_io import load_task_list
    from judge.calibrate import make_calibration
    from terminus.config import load_config
    from core.model import resolve_model_path

    cfg = load_config(args.config, args.overrides)
    tasks = [t for s in args.splits.split(",") if s for t in load_task_list(cfg, s)]
    tok = AutoTokenizer.from_pretrained(str(resolve_model_path(cfg.model.path)))
    examples = make_calibration(tasks, tok, cfg.rollout)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(e.to_json() + "\n" for e in examples))
    print(f"wrote {len(examples)} examples ({len(tasks)} tasks) to {out}")
    return 0
