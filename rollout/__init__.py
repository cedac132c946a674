"""rollout: sandboxes, inference engines (vLLM in Ray actors, OpenAI-compatible endpoints), the
subagent protocol and the token-exact episode loop that turns tasks into trajectories.

Second in the data flow (tasks -> rollout -> judge -> rl). Imports terminus core and tasks;
never judge, rl or cluster.
"""
