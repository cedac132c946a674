"""rollout: inference engines (vLLM in Ray actors, OpenAI-compatible endpoints), the
token-exact episode loop that turns tasks into trajectories, and the scripted teacher.

Second in the data flow (tasks -> rollout -> judge -> rl). Imports core, sandbox and tasks; never
judge, rl, evaluation, cluster or terminus (docs/layers.md). The subagent protocol it speaks is
core.protocol (tasks need it too); commands run in sandbox/.

    tokens.py     token-exact sequences: generated ids kept verbatim, template tokens appended
    episode.py    one episode: generate -> parse -> run in a sandbox -> observe
    worker.py     (task, n) requests -> groups of trajectories; RolloutWorker Ray actor; metrics
    engine/       the Engine seam and its one factory, make_engine; vllm (AsyncLLM in process or in a
                  Ray actor, weight updates), openai; the WeightSync interface
    io.py         trajectory files (JSONL / Parquet), lossless
    teacher.py    the scripted expert teacher (an engine) and SFT demonstrations from it
"""
