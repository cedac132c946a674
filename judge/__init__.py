"""judge: the rubric, the judge backends (rules, local vLLM, OpenAI-compatible) and the judge
pool that turns trajectories into verdicts and rewards.

Third in the data flow (tasks -> rollout -> judge -> rl). Imports only layers below it: core, tasks
(task records) and rollout (trajectories; calibration also runs episodes); never rl, evaluation,
cluster or terminus (docs/layers.md).
"""
from __future__ import annotations


def __getattr__(name: str):
    # Lazy, so `import judge` stays cheap for the CLI.
    if name == "JudgePool":
        from judge.pool import JudgePool
        return JudgePool
    if name == "Verdict":
        from judge.types import Verdict
        return Verdict
    raise AttributeError(name)
