"""`init_ray`: the one way to start a local Ray or join a cluster (every command, the training job,
the corpus build, the offline trainer, the tests and benchmarks call it; nothing calls ray.init).
It lives at the bottom of the tree so every layer that needs Ray can use it."""
from __future__ import annotations

import math
import os
from typing import Any

from core.errors import UserError

# Environment variables a Ray worker must see as the driver does (vLLM settings, W&B, ours, tokenizers).
FORWARDED_ENV = ("VLLM_", "WANDB_", "TERMINUS_", "TOKENIZERS_")
# Ray runs async actors on uvloop when it is installed (vLLM installs it). uvloop's subprocess spawn runs
# Python in the forked child (PyOS_AfterFork_Child), which can deadlock on a lock another thread held at
# the fork; the spawn blocks the loop until the child execs, so one stuck child froze a rollout worker and
# every episode on it (no timeout can fire on a blocked loop). The stdlib loop forks in C only.
WORKER_ENV = {"RAY_USE_UVLOOP": "0"}


class ClusterUnreachable(UserError, ConnectionError):
    """cluster.address names a Ray cluster that does not answer."""


def init_ray(address: str = "", *, num_cpus: float = 0, min_cpus: float = 0, env: dict[str, str] | None = None,
             **ray_kwargs: Any) -> bool:
    """Start a local Ray (address "") or join the cluster at `address` ("auto", "HOST:PORT").

    Idempotent: returns False when Ray was already initialised (the caller must not shut it down),
    True when this call started or joined it. A local Ray gets `num_cpus` logical CPUs, or (0) the
    machine's count raised to `min_cpus`, so a configured layout always fits on one small machine
    (Ray CPUs are bookkeeping). Workers see the driver's VLLM_/WANDB_/TERMINUS_/TOKENIZERS_
    variables, `WORKER_ENV`, plus `env`. `ray_kwargs` go to ray.init (e.g. log_to_driver=False).
    """
    import ray

    if ray.is_initialized():
        return False
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    env_vars.update(WORKER_ENV)
    env_vars.update(env or {})
    args: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}}
    if not address:
        args.update(address="local", include_dashboard=False, log_to_driver=True,
                    num_cpus=int(num_cpus or max(os.cpu_count() or 1, math.ceil(min_cpus))))
        args.update(ray_kwargs)
        ray.init(**args)
        return True
    args.update(ray_kwargs)
    try:
        ray.init(address=address, **args)
    except ConnectionError as e:
        raise ClusterUnreachable(f"cannot reach the Ray cluster at cluster.address={address} ({e}); start it "
                                 "(`ray start --head` on the head node) or fix the address (empty = a local Ray)"
                                 ) from None
    return True
