"""Which run a run directory holds: resume it only with the config it was started with.

`terminus train` (and `train-offline`) save the resolved config as <output_dir>/config.yaml. With
trainer.checkpoint.resume=auto a later run in the same output_dir continues from its newest
checkpoint, so it must be the same run: a config that differs outside RESUMABLE stops the job
before anything starts, naming each key with its saved and new value. (Without this, `seed=1`
after a seed-0 run silently continued seed 0.)

The ways out: the saved config, a new output_dir, or trainer.checkpoint.resume=never, which starts
over in the same directory and sets the earlier checkpoints aside (renamed, not deleted).
"""
from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rl import checkpoint
from core.errors import UserError

# Keys that may differ on resume: they change where the run logs or is kept, not what it computes.
RESUMABLE = (
    "logging.*",              # W&B mode, names, console cadence
    "trainer.checkpoint.*",   # resume itself, how often and how many checkpoints are kept, HF export
    "trainer.grpo.steps",     # extend (or shorten) a run; the LR schedule is recomputed for the new length
    "cluster.address",        # resume on another cluster
)
SHOWN = 8   # differing keys named in the message; the rest are counted


class RunMismatch(UserError):
    """output_dir holds a run started with another config."""


def saved_config_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / "config.yaml"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are values (compared whole)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def config_differences(saved: dict, new: dict, allowed=RESUMABLE) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every key whose value differs, outside `allowed` patterns.
    Keys on one side only come from another version of the schema, not from the user: not compared."""
    a, b = flatten(saved), flatten(new)
    return [(k, a[k], b[k]) for k in sorted(a.keys() & b.keys())
            if a[k] != b[k] and not any(fnmatch.fnmatchcase(k, p) for p in allowed)]


def _plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def would_resume(cfg: DictConfig) -> bool:
    """True when this run would continue an earlier one: resume=auto and a complete checkpoint exists."""
    return (cfg.trainer.checkpoint.resume == "auto"
            and checkpoint.latest(checkpoint.checkpoint_root(cfg.output_dir)) is not None)


def check_resume(cfg: DictConfig) -> None:
    """Raise RunMismatch when this run would resume one saved with a config that differs (outside
    RESUMABLE). Reads two small files; starts nothing."""
    saved_file = saved_config_path(cfg.output_dir)
    if not would_resume(cfg) or not saved_file.is_file():
        return
    diffs = config_differences(_plain(OmegaConf.load(saved_file)), _plain(cfg))
    if diffs:
        raise RunMismatch(mismatch_message(cfg.output_dir, diffs))


def mismatch_message(output_dir: str, diffs: list[tuple[str, Any, Any]]) -> str:
    shown = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in diffs[:SHOWN])
    more = f"; and {len(diffs) - SHOWN} more" if len(diffs) > SHOWN else ""
    return (f"{output_dir} holds a run started with another config ({shown}{more}), and resuming it would "
            f"continue that run: rerun with its config ({saved_config_path(output_dir)}), or start a new run "
            f"with output_dir=<new dir>, or start over here with trainer.checkpoint.resume=never "
            f"(keys that may change on resume: {', '.join(RESUMABLE)})")


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Check the run directory (check_resume), set an earlier run's checkpoints aside when not
    resuming (resume=never: its higher steps would otherwise be found by a later resume, and its
    pruning would delete this run's), then save this run's config. Returns the run directory."""
    check_resume(cfg)
    run_dir = Path(cfg.output_dir)
    root = checkpoint.checkpoint_root(run_dir)
    if cfg.trainer.checkpoint.resume == "never" and checkpoint.complete_checkpoints(root):
        aside = root.with_name(f"checkpoints.before-{time.strftime('%Y%m%d-%H%M%S')}")
        root.rename(aside)
        print(f"[resume] resume=never: the earlier run's checkpoints moved to {aside}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_config_path(run_dir).write_text(OmegaConf.to_yaml(cfg))
    return run_dir


def preflight(cfg: DictConfig) -> None:
    """What a user can get wrong in a training run, checked before Ray or any worker starts (each
    raises a UserError): a run directory holding a run of another config, a WANDB_MODE that is no
    W&B mode, then a bad model.path (last: 'tiny' builds the embedded model)."""
    from core.model import resolve_model_path
    from core.tracking import wandb_settings

    check_resume(cfg)
    wandb_settings(cfg)
    if cfg.trainer.sft.data and "sft" in cfg.trainer.stage:
        from rollout.io import iter_trajectories
        next(iter_trajectories(cfg.trainer.sft.data), None)   # missing or malformed: a UserError now
    resolve_model_path(cfg.model.path)
