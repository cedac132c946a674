"""`terminus train-offline --config C --stage sft|grpo --data FILE`: the trainer alone, on a dataset."""
from __future__ import annotations


def register(sub) -> None:
    from terminus.commands.args import add_config_args
    p = sub.add_parser("train-offline", help="SFT or GRPO on a given dataset of trajectories (no rollouts)")
    add_config_args(p)
    p.add_argument("--stage", required=True, choices=("sft", "grpo"))
    p.add_argument("--data", required=True, help="trajectories (.jsonl or .parquet), e.g. `terminus distill` output")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from rl.offline import train_on_dataset
    from terminus.config import load_config
    from rl.resume import preflight
    cfg = load_config(args.config, args.overrides)
    preflight(cfg)   # before Ray starts: a run of another config in output_dir, a bad model.path
    s = train_on_dataset(cfg, args.data, args.stage)
    print(f"trained {s['steps']} steps; policy exported to {s['hf']}")
    return 0
