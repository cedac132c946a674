"""The `local` backend: the persistent shell runs directly on the host. NO isolation.

For debugging only; refuses to start unless `rollout.sandbox.allow_local=true`. The repository
view is still private (overlay or copy, discarded on close) and the shell runs in its own process
group, which timeout and close kill; a process that leaves that group (setsid) escapes. No memory,
process or network limits apply; CPU time is limited by RLIMIT_CPU.
"""
from __future__ import annotations

import asyncio
import os
import resource
import signal

from sandbox.config import SandboxConfig
from sandbox.base import split_bind
from sandbox.shell import SandboxError, ShellSandbox, wait_for_exit
from sandbox.workspace import Workspace


class LocalSandbox(ShellSandbox):
    def __init__(self, cfg: SandboxConfig, repo_dir: str | None, env: dict | None = None,
                 ro_binds: list[str] = ()):
        if not cfg.allow_local:
            raise SandboxError("the 'local' sandbox backend runs model commands on the host without "
                               "isolation; to use it anyway set rollout.sandbox.allow_local=true")
        super().__init__(cfg.output_limit_bytes, cfg.command_timeout_s)
        self.cfg = cfg
        self.workspace = Workspace(cfg.root_dir or None, repo_dir)
        self.state_path = os.path.join(self.workspace.dir, "shell-state")
        self._env = {**os.environ, "HOME": os.path.join(self.workspace.tmp, "home"),
                     "TMPDIR": self.workspace.tmp, "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat",
                     **{str(k): str(v) for k, v in (env or {}).items()}}
        # No mounts here: a bind into the repository becomes a symlink; other host paths are visible anyway.
        for bind in ro_binds:
            host, dest = split_bind(bind, self.workspace.repo)
            if dest.startswith(self.workspace.repo) and not os.path.lexists(dest):
                os.symlink(host, dest)

    async def _spawn(self, argv_tail: list[str]) -> asyncio.subprocess.Process:
        cpu = self.cfg.cpu_time_limit_s

        def limit_cpu() -> None:  # runs in the child between fork and exec: syscalls only
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))

        return await asyncio.create_subprocess_exec(
            *argv_tail, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=self._env, cwd=self.workspace.repo,
            start_new_session=True, preexec_fn=limit_cpu)

    async def _kill_all(self) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the session/group the shell leads
        except ProcessLookupError:
            pass
        await wait_for_exit(proc, "local sandbox (a process that left the shell's group escapes the kill)")

    async def _teardown(self) -> None:
        self.workspace.destroy()
