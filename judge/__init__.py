"""judge: the rubric, the judge backends (rules, local vLLM, OpenAI-compatible) and the judge
pool that turns trajectories into verdicts and rewards.

Third in the data flow (tasks -> rollout -> judge -> rl). Imports terminus core, tasks and
rollout's data types (Trajectory); never rl or cluster.
"""
