"""The `docker` / `podman` backend: one container per episode, for clusters.

`<engine> run -d` starts the task's image (or cfg.image) with `--network none`, memory (no swap),
pids and CPU-time limits and a tiny `sh` loop as PID 1 (it reaps orphans, and survives
`kill -KILL -1`, which spares PID 1); the repository is copied in with
`<engine> cp` (the container's own layer is the copy-on-write view). The persistent shell is a
`<engine> exec -i` session.

Timeouts: a host-side kill of `<engine> exec` does NOT stop the command inside the container.
Commands cannot be wrapped in `timeout` individually without losing shell state, so on timeout we
run `kill -KILL -1` INSIDE the container (`<engine> exec`), which kills every process but PID 1,
background ones included; the shell then restarts with its saved state. Close removes the
container (`rm -f`). The image needs bash and sh.
"""
from __future__ import annotations

import asyncio
import os
import shutil

from sandbox.config import SandboxConfig
from sandbox.base import split_bind
from sandbox.shell import SandboxError, ShellSandbox, wait_for_exit


async def _engine(engine: str, *args: str, timeout: float = 120.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(engine, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"{engine} {args[0]} timed out after {timeout}s"
    return proc.returncode, out.decode(errors="replace").strip()


_answering: set[tuple[str, str]] = set()  # (engine, DOCKER_HOST) seen answering: skip `info` next time


async def engine_available(engine: str = "docker") -> tuple[bool, str]:
    """(True, "") when `<engine> info` answers, else (False, why)."""
    key = (engine, os.environ.get("DOCKER_HOST", "") + os.environ.get("CONTAINER_HOST", ""))
    if key in _answering:
        return True, ""
    if shutil.which(engine) is None:
        return False, f"{engine} CLI not installed"
    rc, out = await _engine(engine, "info", timeout=20)
    if rc == 0:
        _answering.add(key)
    last = out.strip().splitlines()[-1] if out.strip() else ""
    return rc == 0, ("" if rc == 0 else f"`{engine} info` failed: {last[-200:]}")


# PID 1: `wait` reaps every child, including orphans reparented to PID 1 (no zombies pile up).
_KEEPALIVE = 'trap "exit 0" TERM; while :; do sleep 86400 & wait; done'


class ContainerSandbox(ShellSandbox):
    state_path = "/tmp/.terminus-shell-state"

    def __init__(self, cfg: SandboxConfig, engine: str):
        super().__init__(cfg.output_limit_bytes, cfg.command_timeout_s)
        self.cfg = cfg
        self.engine = engine
        self.container = ""

    @classmethod
    async def create(cls, cfg: SandboxConfig, repo_dir: str | None, image: str, env: dict | None,
                     engine: str, ro_binds: list[str] = ()) -> "ContainerSandbox":
        ok, why = await engine_available(engine)
        if not ok:
            raise SandboxError(f"backend {engine!r} unavailable ({why}); start the engine or set "
                               "rollout.sandbox.backend=bwrap")
        sb = cls(cfg, engine)
        mem = f"{cfg.memory_limit_mb}m"
        args = ["run", "-d", "--network", "none", "--memory", mem, "--memory-swap", mem,
                "--pids-limit", str(cfg.max_processes),
                "--ulimit", f"cpu={cfg.cpu_time_limit_s}:{cfg.cpu_time_limit_s}",
                "--workdir", cfg.workdir, "--label", "terminus.sandbox=1",
                "-e", "TERM=dumb", "-e", "PAGER=cat", "-e", "GIT_PAGER=cat"]
        for k, v in (env or {}).items():
            args += ["-e", f"{k}={v}"]
        for bind in ro_binds:   # a task's environment; cfg.ro_binds are bwrap's (the image has its toolchain)
            host, dest = split_bind(bind, cfg.workdir)
            args += ["-v", f"{host}:{dest}:ro"]
        rc, out = await _engine(engine, *args, image or cfg.image, "sh", "-c", _KEEPALIVE)
        if rc != 0:
            raise SandboxError(f"{engine} run of image {image or cfg.image!r} failed: {out[-500:]}")
        sb.container = out.splitlines()[-1]
        try:
            if repo_dir is not None:
                rc, out = await _engine(engine, "cp", f"{repo_dir.rstrip('/')}/.", f"{sb.container}:{cfg.workdir}")
                if rc != 0:
                    raise SandboxError(f"copying {repo_dir!r} into the container failed: {out[-500:]}")
        except BaseException:
            await sb._teardown()
            raise
        return sb

    async def _spawn(self, argv_tail: list[str]) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            self.engine, "exec", "-i", self.container, *argv_tail,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)

    async def _kill_all(self) -> None:
        if self.container:
            await _engine(self.engine, "exec", self.container, "sh", "-c", "kill -KILL -1",
                          timeout=30)
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await wait_for_exit(self._proc, f"container {self.container}")

    async def _teardown(self) -> None:
        if self.container:
            await _engine(self.engine, "rm", "-f", self.container, timeout=60)
