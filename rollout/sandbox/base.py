"""The sandbox seam: an async terminal in a disposable machine, one per episode."""
from __future__ import annotations

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
