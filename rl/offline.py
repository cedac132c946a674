"""Train on a given dataset of trajectories (no rollouts): `terminus train-offline`.

SFT reads demonstrations (e.g. `terminus distill` output); GRPO reads judged trajectories
(reward set, grouped by group_id) and applies one update per `tasks_per_step * rollouts_per_task`
of them. With trainer.checkpoint.resume=auto it continues from the newest complete checkpoint.
The policy is exported in HF format to <output_dir>/hf at the end.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def train_on_dataset(cfg, data_path: str, stage: str) -> dict[str, Any]:
    from core.raycluster import init_ray
    from rl.group import TrainerGroup
    from rl.resume import prepare_run_dir
    from rollout.io import TrajectoryFileError, read_trajectories

    if stage not in ("sft", "grpo"):
        raise ValueError(f"stage must be sft or grpo, not {stage!r}")
    if stage == "grpo":
        from rl.config import check_grpo_sampling
        check_grpo_sampling(cfg)
    data = read_trajectories(data_path)   # TrajectoryFileError names a missing or malformed file
    if not data:
        raise TrajectoryFileError(f"training data {data_path} holds no trajectory")
    prepare_run_dir(cfg)   # refuses to resume a run of another config; saves this one's
    init_ray(cfg.cluster.address, num_cpus=cfg.cluster.num_cpus or max(2, cfg.trainer.num_workers))
    group = TrainerGroup(cfg)
    try:
        if cfg.trainer.checkpoint.resume == "auto":
            group.resume_point()
        if stage == "sft":
            summary = group.sft(data)
            group.save_checkpoint(group.sft_step)
        else:
            g = cfg.trainer.grpo
            per_step = g.tasks_per_step * g.rollouts_per_task
            steps = []
            for k in range(group.step * per_step, len(data), per_step):
                m = group.grpo_step(data[k:k + per_step], group.version)
                group.tracker.log(m, group.step, prefix="grpo/")
                steps.append(m)
                group.save_checkpoint(group.step)
            summary = {"steps": group.step, "metrics": steps}
        summary["hf"] = str(group.export_hf(Path(cfg.output_dir) / "hf"))
    finally:
        group.shutdown()
    (Path(cfg.output_dir) / f"offline_{stage}_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
