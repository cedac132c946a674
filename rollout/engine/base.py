"""The engine seam: token ids in, token ids + logprobs out. Backends: vllm (in-process or a Ray
actor), openai (an endpoint), and the scripted teacher (rollout.teacher)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable


class EngineError(RuntimeError):
    """The engine failed a request (crashed, unreachable, bad response); the episode is marked failed."""


@dataclass
class Sampling:
    """Per-request sampling, built from SamplingConfig plus the episode's token budget."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    frequency_penalty: float = 0.0                    # per earlier occurrence in this turn's output
    presence_penalty: float = 0.0                     # once for any earlier occurrence in this turn's output
    seed: int | None = None
    stop: list[str] = field(default_factory=list)   # the stop string is kept in the output
    min_tokens: int = 0
    ignore_eos: bool = False                          # benchmarks: force exact lengths
    regex: str | None = None                          # constrain the output to this regex (structured outputs)

    @staticmethod
    def from_config(cfg, max_tokens: int, stop=(), seed: int | None = None) -> "Sampling":
        from core.protocol import TURN_REGEX
        return Sampling(max_tokens=max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                        frequency_penalty=cfg.frequency_penalty, presence_penalty=cfg.presence_penalty,
                        seed=seed if seed is not None else cfg.seed, stop=list(stop),
                        regex=TURN_REGEX if getattr(cfg, "constrain", "none") == "protocol" else None)


@dataclass
class Generation:
    token_ids: list[int]          # exactly as generated, including the stop string's / EOS tokens
    logprobs: list[float]         # logprob of each generated token under the sampling policy's model
    finish_reason: str            # "stop" (stop string or EOS) | "length" | "abort"
    stop_reason: str | int | None = None   # the stop string matched, or the stop token id; None for EOS/length
    policy_version: int = 0
    token_exact: bool = True      # False when a backend could only return text (ids re-tokenized)


@runtime_checkable
class Engine(Protocol):
    """What episodes, the driver and the trainer use of an engine; every backend has all of it."""

    api: str
    """"completions": generate from token ids (token-exact); "chat": generate also needs the
    episode's messages (`messages=`), and ids are the tokenizer's encoding of the returned text."""

    async def generate(self, prompt_ids: list[int], sampling: Sampling,
                       messages: list[dict[str, str]] | None = None) -> Generation: ...

    async def sleep(self) -> bool:
        """Free device memory while a colocated trainer runs; True if it slept (False: nothing to free)."""
        ...

    async def wake_up(self) -> None:
        """Take the memory back after `sleep` (a no-op when it did not sleep)."""
        ...

    async def update_weights(self, path: str, version: int) -> dict[str, Any]:
        """Reload weights from an HF safetensors dir as policy `version` (the disk path of weight
        sync). An engine whose weights cannot change raises EngineError."""
        ...


class WeightSync(Protocol):
    """How trainer weights reach the engines: the one interface over rollout.engine.weight_transfer
    (disk: an HF dir each engine reloads with `update_weights`; nccl / ipc: streamed through vLLM's
    weight-transfer engine). rl.group.TrainerGroup implements it; the driver and the GRPO step
    use only this."""

    def init_weight_transfer(self, engines: Sequence[Engine]) -> None:
        """Connect to the engines once, before the first push (a no-op for disk)."""
        ...

    def push_weights(self, engines: Sequence[Engine], version: int, path: str | Path) -> None:
        """Give the engines the current weights as policy `version` (`path`: where disk writes them)."""
        ...


class FixedWeights:
    """Engine methods for backends whose weights the trainer cannot change (an endpoint, the
    scripted teacher): nothing to free, and a weight update is an error."""

    async def sleep(self) -> bool:
        return False

    async def wake_up(self) -> None:
        return None

    async def update_weights(self, path: str, version: int) -> dict[str, Any]:
        raise EngineError(f"{type(self).__name__} cannot take new weights: only rollout.engine.kind=vllm "
                          "engines are trained")
