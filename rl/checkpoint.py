"""Checkpoint directories: atomic, complete-or-ignored, the last N kept.

    <output_dir>/checkpoints/step_000004/
        model + optimizer shards (torch.distributed.checkpoint), scheduler.pt,
        trainer_state.json  (step, stage, data position, policy version, RNG states, W&B run id)
        COMPLETE            written last

A checkpoint is written into `step_N.tmp/` and renamed once every rank has finished and the state
file and marker are in place, so a job killed mid-save leaves a `.tmp` that `resume=auto` ignores
(and the next save removes).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^step_(\d+)$")


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def staging_dir(root: Path, step: int) -> Path:
    """A fresh temporary directory for the checkpoint of `step`."""
    tmp = root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict[str, Any], keep_last: int) -> Path:
    """Write the trainer state and the COMPLETE marker, then rename into place; prune old ones."""
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    marker = tmp / "COMPLETE"
    marker.write_text("")
    with open(marker) as f:
        os.fsync(f.fileno())
    final = tmp.with_name(tmp.name[: -len(".tmp")])
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in complete_checkpoints(tmp.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial and temporary ones are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / "COMPLETE").exists() and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def latest(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def read_state(ckpt: Path) -> dict[str, Any]:
    return json.loads((ckpt / "trainer_state.json").read_text())


def rng_state() -> dict[str, Any]:
    """Python and torch RNG states of the driver, JSON-serialisable."""
    import torch
    return {"python": repr(random.getstate()), "torch": torch.get_rng_state().tolist()}


def restore_rng(state: dict[str, Any]) -> None:
    import ast

    import torch
    if "python" in state:
        random.setstate(ast.literal_eval(state["python"]))
    if "torch" in state:
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
