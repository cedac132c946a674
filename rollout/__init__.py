"""rollout: sandboxes, inference engines (vLLM in Ray actors, OpenAI-compatible endpoints), the
subagent protocol and the token-exact episode loop that turns tasks into trajectories.

Second in the data flow (tasks -> rollout -> judge -> rl). Imports terminus core and tasks;
never judge, rl or cluster.

    protocol.py   system prompt, messages, the pure turn parser (docs/protocol.md)
    tokens.py     token-exact sequences: generated ids kept verbatim, template tokens appended
    episode.py    one episode: generate -> parse -> run in a sandbox -> observe
    worker.py     (task, n) requests -> groups of trajectories; RolloutWorker Ray actor; metrics
    engine/       the Engine seam; vllm (AsyncLLM in a Ray actor, weight updates), openai
    io.py         trajectory files (JSONL / Parquet), lossless
    cli.py        `terminus rollout`
    sandbox/      where model commands run (bwrap, docker, podman, local)
"""
