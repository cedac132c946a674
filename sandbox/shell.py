"""A long-lived bash inside a sandbox that runs one command at a time: the part every backend shares.

Protocol (see DRIVER): we write the sentinel line once, then each command NUL-terminated to the
shell's stdin. The shell `eval`s it in its own process (so `cd`, `export` and functions persist),
with stdin from /dev/null (a command cannot eat the protocol), stdout and stderr going to the
same pipe (so their order is kept), then prints `\\n<sentinel> <exit status>\\n`.

After every command the shell saves its state (cwd, exported variables, functions) to a file. If
the shell dies -- the command ran `exit 3` or `exec ...`, or it was killed on timeout -- the
result reports the shell's status and the next `run` starts a fresh shell that restores that saved
state: files, cwd, exported variables and functions survive; unexported variables, shell options
and background jobs do not.

Backends subclass `ShellSandbox` and say how to start the shell (`_spawn`), how to kill every
process of the sandbox (`_kill_all`) and how to clean up (`_teardown`).
"""
from __future__ import annotations

import asyncio
import secrets
import time

from sandbox.base import CommandResult
from sandbox.output import OutputBuffer

# $1 is the state file. Names are prefixed so a user's variables do not collide with ours.
DRIVER = r"""
IFS= read -r __tm_sentinel || exit 0
[ -r "$1" ] && . "$1" >/dev/null 2>&1
__tm_state=$1
while IFS= read -r -d '' __tm_cmd; do
  eval "$__tm_cmd" </dev/null
  __tm_rc=$?
  { builtin export -p; builtin declare -f; builtin printf 'builtin cd -- %q\n' "$PWD"; } >"$__tm_state" 2>/dev/null
  builtin printf '\n%s %d\n' "$__tm_sentinel" "$__tm_rc"
done
"""

READ_CHUNK = 1 << 20


class SandboxError(RuntimeError):
    """A sandbox could not be created or used (not a failing command: those return a result)."""


async def wait_for_exit(proc: asyncio.subprocess.Process, what: str, timeout_s: float = 5.0) -> None:
    """Wait for a killed process. asyncio's Process.wait() returns only once the process has exited
    AND its pipes are closed, so a survivor still holding stdout would block it forever: bound it."""
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        raise SandboxError(f"{what}: a process of the sandbox still holds its output pipe "
                           f"{timeout_s:.0f} s after the kill") from None


class _Framer:
    """Splits the shell's output stream at the sentinel line, feeding the rest to an OutputBuffer."""

    def __init__(self, sentinel: bytes, out: OutputBuffer, pending: bytes = b""):
        self.marker = b"\n" + sentinel + b" "
        self.out = out
        self.buf = bytearray(pending)
        self.leftover = b""   # bytes after the sentinel line (background output): the next command's

    def feed(self, data: bytes) -> int | None:
        """Returns the exit status once the sentinel line is complete."""
        self.buf += data
        i = self.buf.find(self.marker)
        if i >= 0:
            j = self.buf.find(b"\n", i + len(self.marker))
            if j < 0:
                return None
            rc = int(self.buf[i + len(self.marker):j])
            self.out.feed(self.buf[:i])
            self.leftover = bytes(self.buf[j + 1:])
            self.buf.clear()
            return rc
        keep = len(self.marker) - 1  # a marker may straddle two reads
        if len(self.buf) > keep:
            self.out.feed(memoryview(self.buf)[:len(self.buf) - keep])
            del self.buf[:len(self.buf) - keep]
        return None

    def flush(self) -> None:
        self.out.feed(self.buf)
        self.buf.clear()


class ShellSandbox:
    """Sandbox protocol implementation on top of a persistent shell; see the module docstring."""

    state_path: str  # path of the state file as the shell sees it

    def __init__(self, output_limit_bytes: int, command_timeout_s: float):
        self.output_limit = output_limit_bytes
        self.command_timeout_s = command_timeout_s
        self._sentinel = secrets.token_hex(16).encode()
        self._proc: asyncio.subprocess.Process | None = None
        self._pending = b""
        self._lock = asyncio.Lock()
        self._closed = False
        self.restarts = 0  # shells started after the first (after exit/exec/timeout)

    # --- backend hooks -------------------------------------------------------------------
    async def _spawn(self, argv_tail: list[str]) -> asyncio.subprocess.Process:
        """Start `argv_tail` (bash running DRIVER) inside the sandbox, stdin/stdout piped, stderr
        merged into stdout."""
        raise NotImplementedError

    async def _kill_all(self) -> None:
        """Kill every process of the sandbox, background ones included."""
        raise NotImplementedError

    async def _teardown(self) -> None:
        """Remove what the sandbox created (after _kill_all)."""

    def _limit_hit(self) -> str | None:
        """A message when a sandbox-wide limit (e.g. the process count) was hit since the last call.
        Processes left in the background then keep the sandbox unusable (a fork bomb), so `run`
        kills every process and restarts the shell with its saved state."""
        return None

    def _notices(self) -> str:
        """Markers for limits hit by the last command that need no recovery (e.g. a full disk)."""
        return ""

    async def _recover(self) -> str:
        why = self._limit_hit()
        if why is None:
            return ""
        await self._kill_all()
        self._limit_hit()  # forks refused while the bomb was being killed belong to this notice
        return f"\n[sandbox: {why}; every process was killed and the shell restarted]\n"

    # --- shared machinery ----------------------------------------------------------------
    def _shell_argv(self) -> list[str]:
        return ["/bin/bash", "--noprofile", "--norc", "-c", DRIVER, "terminus-shell", self.state_path]

    async def _ensure_shell(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            if self._proc is not None:
                self.restarts += 1
            self._proc = await self._spawn(self._shell_argv())
            self._proc.stdin.write(self._sentinel + b"\n")
        return self._proc

    async def run(self, command: str, timeout_s: float | None = None) -> CommandResult:
        if self._closed:
            raise SandboxError("run() on a closed sandbox: open a new one with open_sandbox()")
        if "\0" in command:
            raise ValueError("command contains a NUL byte, which no shell command can hold; remove it")
        timeout = self.command_timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            start = time.monotonic()
            note_before = await self._recover()
            proc = await self._ensure_shell()
            out = OutputBuffer(self.output_limit)
            framer = _Framer(self._sentinel, out, self._pending)
            self._pending = b""
            try:
                proc.stdin.write(command.encode("utf-8", errors="surrogateescape") + b"\0")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the shell died between commands; the reader sees EOF and reports it
            rc, timed_out = await self._collect(proc, framer, timeout)
            if rc is None:  # no sentinel: the shell exited, or we killed it
                framer.flush()
                if timed_out:
                    rc = 124
                else:
                    status = proc.returncode if proc.returncode is not None else await proc.wait()
                    rc = 128 - status if status < 0 else status  # asyncio: -N = killed by signal N
            else:
                self._pending = framer.leftover
            text, truncated = out.render()
            text = note_before.lstrip("\n") + text + await self._recover() + self._notices()
            return CommandResult(output=text, exit_code=rc, timed_out=timed_out, truncated=truncated,
                                 duration_s=time.monotonic() - start, output_bytes=out.total)

    async def _collect(self, proc, framer: _Framer, timeout: float) -> tuple[int | None, bool]:
        """Read until the sentinel (-> exit status), the shell's end (-> None) or the timeout."""

        async def pump() -> int | None:
            while True:
                chunk = await proc.stdout.read(READ_CHUNK)
                if not chunk:
                    return None
                rc = framer.feed(chunk)
                if rc is not None:
                    return rc

        deadline = time.monotonic() + timeout
        reader = asyncio.ensure_future(pump())
        waiter = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait({reader, waiter}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                rc = reader.result()
                if rc is None and waiter not in done:  # EOF, yet the shell lives: wait for its end
                    remaining = max(0.0, deadline - time.monotonic())
                    try:
                        await asyncio.wait_for(asyncio.shield(waiter), remaining)
                    except asyncio.TimeoutError:
                        await self._kill_all()
                        return None, True
                return rc, False
            if waiter in done:
                # The shell ended. Its output is in the pipe; background processes it left may keep
                # the pipe open, so drain briefly and then kill them.
                try:
                    return await asyncio.wait_for(asyncio.shield(reader), 0.5), False
                except asyncio.TimeoutError:
                    await self._kill_all()
                    return await self._finish(reader), False
            await self._kill_all()
            await self._finish(reader)
            return None, True
        finally:
            waiter.cancel()

    @staticmethod
    async def _finish(reader: asyncio.Future) -> None:
        """After a kill the pipe reaches EOF; bound the wait anyway in case a writer escaped."""
        try:
            await asyncio.wait_for(reader, 2.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            reader.cancel()
        return None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._kill_all()
            if self._proc is not None and self._proc.returncode is None:
                try:
                    await asyncio.wait_for(self._proc.wait(), 5.0)
                except asyncio.TimeoutError:
                    pass
        finally:
            await self._teardown()

    async def __aenter__(self) -> "ShellSandbox":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __del__(self):  # a forgotten close() leaks processes and mounts: say so loudly
        if not getattr(self, "_closed", True) and getattr(self, "_proc", None) is not None:
            import warnings
            warnings.warn(f"{type(self).__name__} was not closed; use `async with`", ResourceWarning)
