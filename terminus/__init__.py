"""terminus core: the run config, the `terminus` CLI, model paths (and the embedded tiny model),
the shared OpenAI-compatible client, and experiment tracking.

Everything else imports from here; this package imports nothing from tasks/, rollout/, judge/,
rl/ or cluster/ except their config dataclasses (to compose the run config) and, in cli.py,
their `register` functions.
"""

__version__ = "0.1.0"   # the one place the version is set (pyproject.toml reads it)
