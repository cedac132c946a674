"""rl: the trainer. Pure policy-gradient math (advantages, losses), FSDP2 workers for SFT and
GRPO, checkpoints, and weight export to the rollout engines.

Last in the data flow (tasks -> rollout -> judge -> rl). Imports terminus core and the data
types of rollout and judge; never cluster.
"""
