"""rl: the trainer. Pure policy-gradient math (advantages, losses), FSDP2 workers for SFT and
GRPO, checkpoints, and weight export to the rollout engines.

Last in the data flow (tasks -> rollout -> judge -> rl). Imports core and the layers below it
(rollout's trajectories and trajectory files); never evaluation, cluster or terminus
(docs/layers.md).
"""
from __future__ import annotations


def __getattr__(name: str):
    # Lazy: `import rl` stays cheap (no torch) for the CLI.
    if name == "TrainerGroup":
        from rl.group import TrainerGroup
        return TrainerGroup
    if name == "train_on_dataset":
        from rl.offline import train_on_dataset
        return train_on_dataset
    raise AttributeError(name)
