"""The `terminus` command line.

Each subcommand lives next to the code it drives, in a module with two functions:
`register(subparsers)` adds its parser (cheap: no heavy imports), and the parser's `func`
runs it. This file only lists those modules, so `terminus --help` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from terminus.config import ConfigError, load_config, to_yaml
from terminus.model import ModelPathError

# Modules that add subcommands (each has `register(subparsers)`); missing ones are skipped.
COMMAND_MODULES = [
    "tasks.cli",      # terminus tasks ...
    "rollout.cli",    # terminus rollout
    "judge.cli",      # terminus judge ...
    "rl.cli",         # terminus train (trainer-only stages)
    "cluster.cli",    # terminus train / submit / status / logs / stop
    "terminus.eval_cli",  # terminus eval / distill / serve
]


def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The `--config FILE` + `key=value ...` pair every config-driven command takes."""
    p.add_argument("--config", "-c", required=required,
                   help="YAML file, or a name in configs/ (e.g. tiny_cpu, qwen3_4b)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _model_build_tiny(args: argparse.Namespace) -> int:
    from terminus.model import build_tiny, describe, resolve_model_path, tiny_model_dir

    path = build_tiny(args.out) if args.out else (
        build_tiny(tiny_model_dir()) if args.force else resolve_model_path("tiny"))
    print(describe(path))
    return 0


def _model_chat(args: argparse.Namespace) -> int:
    """Generate one reply from a chat prompt with a real vLLM engine (the smallest end-to-end check)."""
    import os

    from terminus.model import resolve_model_path

    cfg = load_config(args.config, args.overrides)
    path = str(resolve_model_path(cfg.model.path))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, cfg.rollout.engine.kv_cache_space_gb))))
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": args.message}], tokenize=False,
                                           add_generation_prompt=True)
    llm = LLM(model=path, dtype=cfg.model.dtype, max_model_len=cfg.model.max_model_len,
              enforce_eager=cfg.rollout.engine.enforce_eager, seed=cfg.seed)
    out = llm.generate([prompt], SamplingParams(max_tokens=args.max_tokens, temperature=cfg.rollout.sampling.temperature,
                                                seed=cfg.seed))[0].outputs[0]
    print(f"prompt: {prompt!r}")
    print(f"reply ({len(out.token_ids)} tokens): {out.text!r}")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="terminus", description=__doc__.splitlines()[0] + " Train terminal-execution subagents.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    model = sub.add_parser("model", help="build or inspect models")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION")
    bt = msub.add_parser("build-tiny", help="build the embedded tiny Qwen3 model + tokenizer (cached)")
    bt.add_argument("--out", help="write here instead of the cache directory")
    bt.add_argument("--force", action="store_true", help="rebuild even if cached")
    bt.set_defaults(func=_model_build_tiny)
    chat = msub.add_parser("chat", help="generate one reply to a chat message with vLLM")
    add_config_args(chat, required=False)
    chat.add_argument("--message", "-m", default="Run the test suite and report what fails.")
    chat.add_argument("--max-tokens", type=int, default=32)
    chat.set_defaults(func=_model_chat, config="tiny_cpu")
    model.set_defaults(func=lambda a: model.print_help() or 2)

    config = sub.add_parser("config", help="inspect configs")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved config")
    show.add_argument("config", help="YAML file, or a name in configs/")
    show.add_argument("overrides", nargs="*", metavar="key=value")
    show.set_defaults(func=_config_show)
    config.set_defaults(func=lambda a: config.print_help() or 2)

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
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
    except (ConfigError, ModelPathError) as e:
        print(f"terminus: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
