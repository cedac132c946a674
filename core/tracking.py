"""Run tracking: Weights & Biases (offline by default: no account needed, `wandb sync` later) and
the console. One Tracker per run; resuming passes the saved run id so W&B continues the same run.

W&B settings come from the config's `logging` section, except that a W&B variable set in the
environment (WANDB_MODE, WANDB_PROJECT, WANDB_ENTITY, WANDB_NAME, WANDB_RUN_GROUP, WANDB_TAGS)
wins: a cluster, CI or a shell sets it for every run without editing configs."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from core.errors import UserError

# W&B's own aliases of the modes (WANDB_MODE=dryrun is offline, =run is online).
_MODES = {"offline": "offline", "dryrun": "offline", "online": "online", "run": "online", "disabled": "disabled"}


def wandb_settings(cfg, env: dict[str, str] | None = None) -> dict[str, Any]:
    """wandb.init's mode, project, entity, name, group and tags: the environment's, else the config's."""
    env = os.environ if env is None else env
    lg = cfg.logging
    mode = env.get("WANDB_MODE") or lg.wandb_mode
    if mode not in _MODES:
        raise UserError(f"WANDB_MODE={mode!r} in the environment is not a W&B mode: set offline, online or "
                        f"disabled, or unset it to use logging.wandb_mode")
    tags = env.get("WANDB_TAGS")
    return {"mode": _MODES[mode],
            "project": env.get("WANDB_PROJECT") or lg.wandb_project,
            "entity": env.get("WANDB_ENTITY") or lg.wandb_entity or None,
            "name": env.get("WANDB_NAME") or lg.wandb_name or cfg.name,
            "group": env.get("WANDB_RUN_GROUP") or lg.wandb_group or None,
            "tags": [t.strip() for t in tags.split(",") if t.strip()] if tags else list(lg.wandb_tags) or None}


class Tracker:
    def __init__(self, cfg, run_dir: str | os.PathLike, run_id: str | None = None, job_type: str = "train"):
        self.cfg = cfg.logging
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        self.run = None
        self.run_id = run_id
        settings = wandb_settings(cfg)
        if settings["mode"] != "disabled":
            import wandb
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(dir=str(self.run_dir), id=run_id, resume="allow", job_type=job_type,
                                  config=_plain(cfg), **settings)
            self.run_id = self.run.id
        # Metrics also go to a JSONL file in the run directory: readable without W&B.
        self.metrics_file = self.run_dir / "metrics.jsonl"

    def log(self, metrics: dict[str, Any], step: int, prefix: str = "") -> None:
        flat = {f"{prefix}{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.run is not None:
            self.run.log(flat, step=step)
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps({"step": step, "time_s": round(time.time() - self.start, 2), **flat}) + "\n")
        if step % self.cfg.console_every == 0:
            keys = [k for k in flat if not k.endswith("_max")][:12]
            body = "  ".join(f"{k}={_fmt(flat[k])}" for k in keys)
            print(f"[{prefix.rstrip('/') or 'train'} {step}] {body}", flush=True)

    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A W&B table, and the same rows in samples.jsonl (readable without W&B)."""
        if self.run is not None:
            import wandb
            self.run.log({name: wandb.Table(columns=columns, data=rows)}, step=step)
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for row in rows:
                f.write(json.dumps({"table": name, "step": step, **dict(zip(columns, row))}) + "\n")

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


SAMPLE_COLUMNS = ["task_id", "reward", "finish_reason", "turns", "commands", "report", "error", "verdict"]


def sample_rows(trajectories, k: int) -> list[list[Any]]:
    """Rows of SAMPLE_COLUMNS for the first k trajectories of distinct tasks, so one table shows
    what the policy does across tasks (the best and the worst of a group would hide the typical)."""
    rows, seen = [], set()
    for t in trajectories:
        if t.task_id in seen:
            continue
        seen.add(t.task_id)
        r = t.report or {}
        report = f"[{r.get('status', '')}] {r.get('summary', '')} | {r.get('details', '')}" if t.report else ""
        rows.append([t.task_id, t.reward, t.finish_reason, len(t.turns),
                     " ; ".join(x.command or f"<{x.action}>" for x in t.turns), report[:2000], t.error or "",
                     verdict_label(t.verdict)])
        if len(rows) == k:
            break
    return rows


def verdict_label(verdict: dict | None) -> str:
    """Which judge gave the reward, and why there is none when the verdict is unjudgeable."""
    if not verdict:
        return ""
    why = verdict.get("reason", "") if verdict.get("status") != "ok" else ""
    return f"{verdict.get('judge', '')}: {why[:200]}" if why else verdict.get("judge", "")


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isnan(v) or abs(v) >= 1e4 or (v and abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4f}"


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf
    return OmegaConf.to_container(cfg, resolve=True)
