"""core: the ground floor every other package may import, and which imports none of them.

    errors.py       UserError (one line, exit 2) and ConfigError
    fields.py       dataclass fields with declared choices and ranges (the config schema's vocabulary)
    files.py        write_json_atomic: write then rename, so a killed job never leaves half a file
    model.py        model paths, the cache root and the embedded tiny Qwen3 model
    net.py          free_port
    openai_api.py   Endpoint: every OpenAI-compatible endpoint through the `openai` SDK (retries, timeouts)
    ratelimit.py    the one per-minute rate limiter (requests and tokens) of every endpoint
    raycluster.py   init_ray: the one way to start a local Ray or join a cluster
    protocol.py     the subagent protocol: prompts, messages, the turn parser (docs/protocol.md)
    tracking.py     experiment tracking: W&B, console, metrics.jsonl
    testing/        test utilities that speak real protocols (a scripted OpenAI-compatible server)

The layer order of the whole tree is in docs/README.md (and tests/test_layering.py enforces it).
"""
