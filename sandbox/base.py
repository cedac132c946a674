"""The sandbox seam: an async terminal in a disposable machine, one per episode."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class CommandResult:
    output: str          # merged stdout+stderr, in order, decoded with errors replaced, capped head+tail
    exit_code: int       # 124 on timeout (like coreutils `timeout`), 128+N when killed by signal N
    timed_out: bool
    truncated: bool      # True when the middle of the output was dropped (a marker says how much)
    duration_s: float
    output_bytes: int = 0  # size before truncation


@runtime_checkable
class Sandbox(Protocol):
    """Shell state (cwd, exported variables, files) persists across `run` calls of one sandbox."""

    async def run(self, command: str, timeout_s: float | None = None) -> CommandResult: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> "Sandbox": ...

    async def __aexit__(self, *exc) -> None: ...


def split_bind(bind: str, workdir: str) -> tuple[str, str]:
    """A read-only bind "HOST" or "HOST:DEST" as (host, dest): DEST defaults to HOST, and a relative
    DEST is under the sandbox's workdir (where the repository is)."""
    host, _, dest = bind.partition(":")
    dest = dest or host
    return host, dest if os.path.isabs(dest) else os.path.join(workdir, dest)
