"""Ray jobs: submit a training run to a Ray cluster, and follow, inspect or stop it.

`terminus submit` goes through Ray's Job Submission API (the same HTTP API as `ray job submit`):
the repository is uploaded as the job's working directory (without the venv, run outputs and
caches), so the cluster runs exactly the code on this machine; env vars travel in the runtime
environment. The plain Ray equivalent of `terminus submit --address URL --config tiny_cpu`:

    ray job submit --address URL --working-dir . \
        --runtime-env-json '{"excludes": [".venv", ".git", "runs", "wandb"]}' \
        -- python -m terminus.cli train --config tiny_cpu
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Sequence

from core.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never uploaded: environments, outputs and caches (Ray refuses working dirs over 500 MiB).
EXCLUDES = [".venv", ".git", "runs", "wandb", "__pycache__", "*.egg-info", ".pytest_cache", ".cache", "build"]
# Forwarded from the submitting shell when set (tokens stay out of the command line and the logs).
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "HF_TOKEN", "OPENAI_API_KEY",
                 "VLLM_CPU_KVCACHE_SPACE")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class JobError(UserError, RuntimeError):
    """A job request the cluster refused or could not answer; names the address and what to check."""


def resolve_address(address: str | None) -> str:
    """`--address`, else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS, else the local dashboard; adds http://."""
    a = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    return a if "://" in a else f"http://{a}"


def train_entrypoint(config: str, overrides: Sequence[str] = (), python: str = "python") -> str:
    """The shell command a training job runs on the cluster."""
    return " ".join(shlex.quote(x) for x in [python, "-m", "terminus.cli", "train", "--config", config, *overrides])


def read_runtime_env(path: str | os.PathLike) -> dict:
    """A Ray runtime environment from a YAML or JSON file (`terminus submit --runtime-env FILE`): `pip`,
    `uv`, `conda`, `image_uri` / `container`, `env_vars`, `py_modules`, ... as Ray documents them."""
    from omegaconf import OmegaConf

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UserError(f"--runtime-env {p}: cannot read it ({e.strerror or e})") from None
    try:
        data = OmegaConf.to_container(OmegaConf.create(text)) if text.strip() else None
    except Exception as e:  # the YAML parser's errors, or interpolation syntax
        raise UserError(f"--runtime-env {p} is not YAML or JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"--runtime-env {p} must hold a mapping of Ray runtime_env keys (pip, image_uri, "
                        f"env_vars, ...), not {type(data).__name__}")
    return data


def runtime_env(env: dict[str, str] | None = None, working_dir: str | os.PathLike = REPO_ROOT,
                base: dict | None = None) -> dict:
    """The job's runtime environment: `base` (a --runtime-env file: pip, container, ...) with the repo
    as working dir (unless `base` names one), our excludes added to its own, and env vars from
    `base`, then the forwarded shell variables, then `env` (--env), later ones winning."""
    out = dict(base or {})
    env_vars = dict(out.get("env_vars") or {})
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)})
    env_vars.update(env or {})
    out.setdefault("working_dir", str(working_dir))
    out["excludes"] = list(EXCLUDES) + [x for x in out.get("excludes") or [] if x not in EXCLUDES]
    out["env_vars"] = env_vars
    return out


def absolute_output_dir(output_dir: str, cwd: str | os.PathLike) -> str | None:
    """A relative output_dir of a submitted job resolved against the submitter's directory (in the job
    it would resolve inside Ray's per-node copy of the upload, and be lost); None when already absolute."""
    return None if Path(output_dir).is_absolute() else str(Path(cwd, output_dir).resolve())


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    try:
        return JobSubmissionClient(url)
    except Exception as e:  # connection refused, not a Ray dashboard, ...
        raise JobError(f"cannot reach the Ray job server at {url}: {e}. Start one with "
                       f"`ray start --head --dashboard-host 0.0.0.0` or pass --address http://HEAD:8265") from None


def submit(entrypoint: str, *, address: str | None = None, env: dict[str, str] | None = None,
           working_dir: str | os.PathLike = REPO_ROOT, submission_id: str | None = None,
           base_env: dict | None = None) -> str:
    """Submit `entrypoint` with the repo as working dir (and `base_env`, a --runtime-env file's
    runtime environment); returns the job id."""
    return _client(address).submit_job(entrypoint=entrypoint, runtime_env=runtime_env(env, working_dir, base_env),
                                       submission_id=submission_id)


def status(job_id: str, address: str | None = None) -> tuple[str, str]:
    """(status, message), status one of PENDING RUNNING STOPPED SUCCEEDED FAILED."""
    info = _client(address).get_job_info(job_id)
    return str(info.status.value if hasattr(info.status, "value") else info.status), info.message or ""


def logs(job_id: str, address: str | None = None) -> str:
    return _client(address).get_job_logs(job_id)


def stop(job_id: str, address: str | None = None) -> bool:
    """Ask the cluster to stop the job; True if it was running."""
    return _client(address).stop_job(job_id)


def wait(job_id: str, address: str | None = None, timeout_s: float = 3600.0, poll_s: float = 1.0) -> str:
    """Poll until the job reaches a terminal status; returns it. Raises JobError on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        s, _ = status(job_id, address)
        if s in TERMINAL:
            return s
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {s} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def follow(job_id: str, address: str | None = None) -> None:
    """Print the job's log as it grows, until the job ends."""
    import asyncio

    async def tail() -> None:
        async for chunk in _client(address).tail_job_logs(job_id):
            print(chunk, end="", flush=True)

    asyncio.run(tail())
