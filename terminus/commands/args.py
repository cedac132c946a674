"""The arguments every subcommand spells the same way (terminus.cli lists the conventions)."""
from __future__ import annotations

import argparse

DEFAULT_CONFIG = "tiny_cpu"


def add_config_args(p: argparse.ArgumentParser, default: str | None = DEFAULT_CONFIG) -> None:
    """The `-c/--config NAME_OR_FILE` + `key=value ...` pair every config-driven command takes."""
    p.add_argument("--config", "-c", default=default, metavar="NAME_OR_FILE",
                   help="YAML file, or a name of a shipped config (tiny_cpu, qwen3_4b)"
                        + (f"; default {default}" if default else ""))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1")


def add_task_args(p: argparse.ArgumentParser, split_default: str) -> None:
    """The `--split` / `--tasks FILE` / `--limit` trio every command that runs tasks takes."""
    p.add_argument("--split", default=split_default, choices=("train", "validation", "test"),
                   help=f"split of the configured corpus, tasks.corpus (default {split_default})")
    # --tasks-file: the old spelling of eval/distill/study, kept as an alias.
    p.add_argument("--tasks", "--tasks-file", dest="tasks_file", default="", metavar="FILE",
                   help="a JSONL file of Task records instead of a corpus split")
    p.add_argument("--limit", type=int, default=0, help="only the first N tasks (0 = all)")
