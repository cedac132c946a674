"""Sandboxes: disposable machines where model-generated commands run, one per episode.

Just above core (docs/layers.md): tasks run sandboxes to build ground truth, rollout runs an
episode's commands in one. Imports only core.

Usage (the one form):

    from sandbox import open_sandbox
    async with await open_sandbox(cfg.rollout.sandbox, repo_dir, image=task_image, env={...}) as sb:
        r = await sb.run("cd src && pytest -q")     # CommandResult: output, exit_code, timed_out, ...
        r = await sb.run("sleep 100", timeout_s=5)  # exit_code 124, timed_out True

`repo_dir` is a read-only template (None: an empty work dir); the sandbox sees a private writable
copy-on-write view of it at `cfg.workdir`, discarded on close. Shell state (cwd, exported
variables, functions, files) persists across `run` calls. `cfg.backend` picks the backend:
bwrap (default), docker, podman, local (opt-in, no isolation). See docs/sandbox.md.
"""
from __future__ import annotations

from sandbox.config import SandboxConfig
from sandbox.base import CommandResult, Sandbox
from sandbox.output import OutputBuffer, clean_text, format_output
from sandbox.shell import SandboxError

__all__ = ["open_sandbox", "Sandbox", "CommandResult", "SandboxError", "format_output",
           "clean_text", "OutputBuffer"]


async def open_sandbox(cfg: SandboxConfig, repo_dir: str | None, *, image: str = "",
                       env: dict | None = None, ro_binds: list[str] = ()) -> Sandbox:
    """Create a sandbox for one episode; use it as `async with await open_sandbox(...) as sb:`.

    `image` is only used by docker/podman (default cfg.image). `env` adds environment variables,
    `ro_binds` read-only binds ("HOST" or "HOST:DEST", DEST relative to cfg.workdir) to those of
    cfg.ro_binds: a task's environment (tasks.types.TaskEnvironment). Raises SandboxError (with how
    to fix it) when the backend cannot start.
    """
    if cfg.backend == "bwrap":
        import asyncio

        from sandbox.bwrap import BwrapSandbox
        # Mounting/copying the repository touches the disk: keep the event loop free meanwhile.
        return await asyncio.to_thread(BwrapSandbox, cfg, repo_dir, env, list(ro_binds))
    if cfg.backend == "local":
        from sandbox.local import LocalSandbox
        return LocalSandbox(cfg, repo_dir, env, list(ro_binds))
    if cfg.backend in ("docker", "podman"):
        from sandbox.container import ContainerSandbox
        return await ContainerSandbox.create(cfg, repo_dir, image, env, engine=cfg.backend, ro_binds=list(ro_binds))
    raise SandboxError(f"unknown rollout.sandbox.backend {cfg.backend!r}; "
                       "use one of bwrap, docker, podman, local")
