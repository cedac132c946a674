"""The engine seam: token ids in, token ids + logprobs out. Backends: vllm (Ray actor), openai."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class EngineError(RuntimeError):
    """The engine failed a request (crashed, unreachable, bad response); the episode is marked failed."""


@dataclass
class Sampling:
    """Per-request sampling, built from SamplingConfig plus the episode's token budget."""
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)   # the stop string is kept in the output
    min_tokens: int = 0
    ignore_eos: bool = False                          # benchmarks: force exact lengths
    regex: str | None = None                          # constrain the output to this regex (structured outputs)

    @staticmethod
    def from_config(cfg, max_tokens: int, stop=(), seed: int | None = None) -> "Sampling":
        from core.protocol import TURN_REGEX
        return Sampling(max_tokens=max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
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
    async def generate(self, prompt_ids: list[int], sampling: Sampling) -> Generation: ...
