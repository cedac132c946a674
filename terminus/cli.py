"""The `terminus` command line.

Each group of subcommands is a module of terminus/commands/, named after the package it drives
(commands/tasks.py drives tasks/, ...): `register(subparsers)` adds its parsers (cheap: the work is
imported inside each command), and the parser's `func` runs it. The commands live here, at the top
of the tree, because they load the run config (terminus.config), which composes every package's.
This file only lists those modules, so `terminus --help` stays fast.

Conventions every subcommand keeps:
  - config: `-c/--config NAME_OR_FILE` then `key=value` overrides (commands.args.add_config_args);
  - tasks: `--split SPLIT` of tasks.corpus, or `--tasks FILE` of Task records (commands.args.add_task_args);
  - a user's mistake raises a core.errors.UserError: `main` prints it as one line, exit 2.
"""
from __future__ import annotations

import argparse
import sys

from core.errors import UserError, one_line
from core.model import TINY_SPECS
from terminus import __version__
from terminus.commands import cluster, evaluation, judge, rl, rollout, tasks
from terminus.commands.args import DEFAULT_CONFIG, add_config_args
from terminus.config import load_config, to_yaml

# The modules that add subcommands, each with `register(subparsers)`, in the order they register.
COMMAND_MODULES = (
    tasks,        # terminus tasks ...
    rollout,      # terminus rollout
    judge,        # terminus judge ...
    rl,           # terminus train-offline (the trainer alone, on a dataset)
    cluster,      # terminus train / compare / submit / status / logs / stop
    evaluation,   # terminus eval / distill / serve / study
)


def _model_build_tiny(args: argparse.Namespace) -> int:
    from core.model import build_tiny, describe, resolve_model_path, tiny_model_dir

    spec = TINY_SPECS[args.name]
    path = build_tiny(args.out, spec) if args.out else (
        build_tiny(tiny_model_dir(spec), spec) if args.force else resolve_model_path(args.name))
    print(describe(path))
    return 0


def _model_chat(args: argparse.Namespace) -> int:
    """Generate one reply from a chat prompt with a real vLLM engine (the smallest end-to-end check)."""
    import asyncio

    from omegaconf import OmegaConf

    from core.model import resolve_model_path
    from rollout.engine import Sampling, make_engine
    from rollout.worker import load_tokenizer

    cfg = load_config(args.config, args.overrides)
    OmegaConf.update(cfg, "rollout.engine.kind", "vllm")   # the command tries the local model
    tokenizer = load_tokenizer(str(resolve_model_path(cfg.model.path)))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": args.message}], tokenize=False,
                                           add_generation_prompt=True)

    async def reply():
        engine = make_engine(cfg, tokenizer)
        try:
            return await engine.generate(tokenizer.encode(prompt, add_special_tokens=False),
                                         Sampling(max_tokens=args.max_tokens, temperature=cfg.rollout.sampling.temperature,
                                                  seed=cfg.seed))
        finally:
            await engine.close()

    out = asyncio.run(reply())
    print(f"prompt: {prompt!r}")
    print(f"reply ({len(out.token_ids)} tokens): {tokenizer.decode(out.token_ids, skip_special_tokens=True)!r}")
    return 0


def _model_export(args: argparse.Namespace) -> int:
    """A step checkpoint of a run as a sharded HF directory that `vllm serve` and transformers load."""
    from rl.export import export_checkpoint

    out = export_checkpoint(args.run_dir, step=args.step, dtype=args.dtype, out=args.out,
                            max_shard_size=args.max_shard_size)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    print(f"exported to {out} ({len(shards)} shard{'s' if len(shards) != 1 else ''}); serve it with: vllm serve {out}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.config is None and overrides and "=" not in overrides[0]:
        args.config = overrides.pop(0)   # the old spelling: `config show NAME key=value ...`
    cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
    print(to_yaml(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terminus", description=__doc__.splitlines()[0] + " Train terminal-execution subagents.")
    parser.add_argument("--version", action="version", version=f"terminus {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    model = sub.add_parser("model", help="build or inspect models")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION")
    bt = msub.add_parser("build-tiny", help="build the embedded tiny Qwen3 model + tokenizer (cached)")
    bt.add_argument("--name", default="tiny-copy-obs", choices=sorted(TINY_SPECS),
                    help="which embedded model: tiny-copy-obs (tiny_cpu's) starts with a copy circuit that reads "
                         "user turns only; tiny-copy copies from anywhere; tiny has none (default: %(default)s)")
    bt.add_argument("--out", help="write here instead of the cache directory")
    bt.add_argument("--force", action="store_true", help="rebuild even if cached")
    bt.set_defaults(func=_model_build_tiny)
    chat = msub.add_parser("chat", help="generate one reply to a chat message with vLLM")
    add_config_args(chat)
    chat.add_argument("--message", "-m", default="Run the test suite and report what fails.")
    chat.add_argument("--max-tokens", type=int, default=32)
    chat.set_defaults(func=_model_chat)
    ex = msub.add_parser("export", help="a run's step checkpoint as a sharded HF directory (vllm serve, transformers)")
    ex.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of a `terminus train` run")
    ex.add_argument("--step", type=int, help="the checkpoint of this step (default: the newest)")
    ex.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                    help="weights' dtype (default: the run's trainer.param_dtype)")
    ex.add_argument("--out", help="write here (default: RUN_DIR/hf_step_N)")
    ex.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB, 500MB or bytes (default: 5GB)")
    ex.set_defaults(func=_model_export)
    model.set_defaults(func=lambda a: model.print_help() or 2)

    config = sub.add_parser("config", help="inspect configs")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help=f"print the resolved config (default {DEFAULT_CONFIG})")
    add_config_args(show, default=None)
    show.set_defaults(func=_config_show)
    config.set_defaults(func=lambda a: config.print_help() or 2)

    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:   # the user's to fix: one line, no traceback; anything else is a bug
        print(f"terminus: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
