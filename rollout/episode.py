"""One episode: a task's request, up to max_turns of (generate -> parse -> run in the sandbox ->
observe), a token-exact Trajectory out. Failures (sandbox, engine, timeout) come back as a
Trajectory with `error` and `finish_reason` set; nothing raises past `run_episode`.

An episode that runs out of its wall-clock budget is the policy's failure when its own commands
took the time (slow or hanging commands): it comes back with finish_reason "timeout" and no
`error`, so it is judged (no report: a low reward) and trained on. When the time went elsewhere
(generation: a slow or stuck engine) it is an infrastructure failure: `error` is set and training
masks it, like a sandbox or engine error.
"""
from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from core import protocol
from rollout.engine.base import Engine, Sampling
from sandbox.base import Sandbox
from rollout.tokens import ChatFormat, TokenSequence
from rollout.trajectory import Trajectory, Turn

# task -> an opened, not yet entered, sandbox for it (its repo_dir, image and environment).
# Default: the task's environment's (tasks.types.TaskEnvironment.open_sandbox).
SandboxFactory = Callable[[Any], Awaitable[Sandbox]]


@dataclass
class _State:
    """What an episode has so far; kept outside the loop so a timeout still returns it."""
    seq: TokenSequence | None = None
    turns: list[Turn] = field(default_factory=list)
    report: dict | None = None
    finish_reason: str = ""
    versions: list[int] = field(default_factory=list)
    token_exact: bool = True
    setup_s: float = 0.0
    command_s: float = 0.0                 # time in the policy's commands, finished ones
    command_started: float | None = None   # monotonic start of the command running now, if any

    def command_time(self, now: float) -> float:
        """Time spent in the policy's commands so far, the one running now included."""
        return self.command_s + (now - self.command_started if self.command_started is not None else 0.0)


def policy_timeout(command_s: float, budget_s: float) -> bool:
    """Whether an episode that ran out of its budget did so because of the policy: its commands
    took at least half of the budget (else generation, i.e. the engine, took most of it)."""
    return command_s >= budget_s / 2


def default_sandbox_factory(sandbox_cfg) -> SandboxFactory:
    async def open_one(task) -> Sandbox:
        from tasks.types import TaskEnvironment
        env = getattr(task, "environment", None) or TaskEnvironment()   # what the build ran it with
        return await env.open_sandbox(sandbox_cfg, task.repo_dir or None, image=task.image)
    return open_one


async def run_episode(task, engine: Engine, tokenizer: Any, cfg, *, fmt: ChatFormat | None = None,
                      sandbox_factory: SandboxFactory | None = None, group_id: str = "",
                      seed: int | None = None, max_model_len: int | None = None) -> Trajectory:
    """Run one episode of `task` (a tasks.types.Task) with `cfg` (a RolloutConfig).

    The sandbox starts (and task.setup runs) while the first turn is generated: the first
    command waits for it. Time spent waiting for setup is outside the episode's time budget.
    """
    fmt = fmt or ChatFormat.of(tokenizer)
    factory = sandbox_factory or default_sandbox_factory(cfg.sandbox)
    state = _State()
    started = time.monotonic()
    opening = asyncio.create_task(_open_and_setup(task, factory, cfg, state))
    error = None
    try:
        async with asyncio.timeout(cfg.episode.episode_timeout_s) as budget:
            async def sandbox() -> Sandbox:
                if opening.done():
                    return opening.result()
                clock = asyncio.get_running_loop().time
                remaining = budget.when() - clock()
                budget.reschedule(None)  # waiting for setup is outside the budget
                try:
                    return await asyncio.shield(opening)
                finally:
                    budget.reschedule(clock() + remaining)
            await _loop(task, engine, tokenizer, fmt, cfg, sandbox, state, seed, max_model_len)
    except TimeoutError:
        state.finish_reason = "timeout"
        budget_s = cfg.episode.episode_timeout_s
        command_s = state.command_time(time.monotonic())
        if state.command_started is not None and state.turns:   # the command the budget cut short
            state.turns[-1].timed_out = True
            state.turns[-1].exec_time_s = time.monotonic() - state.command_started
        if not policy_timeout(command_s, budget_s):   # the engine's slowness, not the policy's commands
            error = f"timeout: episode exceeded {budget_s}s, {command_s:.1f}s of it in commands"
    except _Failed as e:
        error = str(e)
    except Exception as e:  # anything unexpected: mark the episode, keep it
        error = f"internal: {type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    # Always wait for the sandbox (cancelling mid-start could leak it), then close it.
    try:
        sb = await opening
        try:
            await sb.__aexit__(None, None, None)
        except Exception as e:
            error = error or f"sandbox: close failed: {type(e).__name__}: {e}"
    except _Failed as e:  # the sandbox did not start or setup failed: the episode is not usable
        error = str(e)
    reason = state.finish_reason if error is None else (
        "timeout" if state.finish_reason == "timeout" else "error")
    return _finish(task, state, reason, error, group_id, started)


class _Failed(RuntimeError):
    """An engine or sandbox failure inside the loop; the message starts with its kind."""


async def _open_and_setup(task, factory: SandboxFactory, cfg, state: _State) -> Sandbox:
    """Start the episode's sandbox and run task.setup in it; raises _Failed("sandbox: ..."/"setup: ...")."""
    t0 = time.monotonic()
    try:
        sb = await factory(task)
        await sb.__aenter__()
    except Exception as e:
        raise _Failed(f"sandbox: {type(e).__name__}: {e}") from None
    try:
        for cmd in task.setup:
            r = await sb.run(cmd, timeout_s=max(cfg.sandbox.command_timeout_s, 300.0))
            if r.exit_code != 0:
                raise _Failed(f"setup: `{cmd}` exited {r.exit_code}: {r.output[-500:]}")
    except BaseException as e:
        await sb.__aexit__(None, None, None)
        if isinstance(e, _Failed) or not isinstance(e, Exception):
            raise
        raise _Failed(f"sandbox: setup could not run: {type(e).__name__}: {e}") from None
    finally:
        state.setup_s = time.monotonic() - t0
    return sb


async def _loop(task, engine: Engine, tokenizer, fmt: ChatFormat, cfg, sandbox: Callable[[], Awaitable[Sandbox]],
                state: _State, seed: int | None, max_model_len: int | None) -> None:
    ep = cfg.episode
    context = min(ep.max_context_tokens, max_model_len or ep.max_context_tokens)
    messages = protocol.initial_messages(task.request, cfg.sandbox.workdir, ep.max_turns)
    state.seq = seq = TokenSequence.start(tokenizer, fmt, messages)
    for turn_no in range(ep.max_turns):
        budget = min(cfg.sampling.max_tokens_per_turn, context - len(seq))
        if budget < ep.min_turn_tokens:
            state.finish_reason = "context_limit"
            return
        sampling = Sampling.from_config(cfg.sampling, budget, stop=protocol.STOP_STRINGS,
                                        seed=None if seed is None else seed + turn_no)
        t0 = time.monotonic()
        try:
            extra = {"messages": list(seq.messages)} if engine.api == "chat" else {}
            gen = await engine.generate(list(seq.token_ids), sampling, **extra)
        except Exception as e:
            raise _Failed(f"engine: {type(e).__name__}: {e}") from None
        gen_s = time.monotonic() - t0
        if gen.finish_reason == "abort":
            raise _Failed("engine: the request was aborted by the engine")
        state.versions.append(gen.policy_version)
        state.token_exact &= gen.token_exact
        text = seq.add_generation(gen.token_ids, gen.logprobs)
        parsed = protocol.parse_turn(text)
        turn = Turn(text=text, action=parsed.action, command=parsed.command, format_error=parsed.error,
                    gen_time_s=gen_s, num_generated_tokens=len(gen.token_ids),
                    cut_off=gen.finish_reason == "length")
        state.turns.append(turn)
        if parsed.action == "report":
            state.report = parsed.report
            state.finish_reason = "report"
            return
        turns_left = ep.max_turns - turn_no - 1
        if parsed.action == "command":
            try:
                sb = await sandbox()
            except _Failed:
                raise
            except Exception as e:
                raise _Failed(f"sandbox: {type(e).__name__}: {e}") from None
            t1 = state.command_started = time.monotonic()
            try:
                r = await sb.run(parsed.command, timeout_s=cfg.sandbox.command_timeout_s)
            except Exception as e:
                raise _Failed(f"sandbox: {type(e).__name__}: {e}") from None
            turn.exec_time_s = time.monotonic() - t1
            state.command_s += turn.exec_time_s
            state.command_started = None
            turn.exit_code, turn.timed_out, turn.truncated = r.exit_code, r.timed_out, r.truncated
            message = protocol.format_observation(
                protocol.Observation(r.exit_code, r.output, r.timed_out, r.truncated), turns_left)
        else:
            message = protocol.format_error_message(parsed.error, turns_left)
        turn.observation = message
        if turns_left == 0:
            break  # the cap: no observation is appended after the last turn
        seq.add_user(message)
    state.finish_reason = "max_turns"


def _finish(task, state: _State, reason: str, error: str | None, group_id: str, started: float) -> Trajectory:
    seq = state.seq
    format_errors = sum(t.rejected for t in state.turns)
    return Trajectory(
        task_id=task.id,
        messages=list(seq.messages) if seq else [],
        token_ids=list(seq.token_ids) if seq else [],
        response_mask=list(seq.mask) if seq else [],
        logprobs=list(seq.logprobs) if seq else [],
        prompt_len=seq.prompt_len if seq else 0,
        turns=state.turns,
        report=state.report,
        finish_reason=reason,
        error=error,
        group_id=group_id,
        policy_version=min(state.versions) if state.versions else 0,
        metadata={"format_errors": format_errors, "policy_versions": state.versions,
                  "token_exact": state.token_exact, "setup_s": round(state.setup_s, 3),
                  "wall_s": round(time.monotonic() - started, 3), "category": getattr(task, "category", "")},
    )
