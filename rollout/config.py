"""Configs of the rollout side: inference engines, sampling and the episode loop (the sandbox's,
SandboxConfig, is sandbox.config's; RolloutConfig.sandbox holds it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from core.fields import at_least, in_range, one_of, positive
from sandbox.config import SandboxConfig


@dataclass
class SamplingConfig:
    temperature: float = in_range(0.0, 5.0, default=1.0)
    top_p: float = in_range(0.0, 1.0, default=1.0)
    top_k: int = -1
    max_tokens_per_turn: int = at_least(1, default=256)
    seed: Optional[int] = None
    frequency_penalty: float = in_range(0.0, 2.0, default=0.0,
                                        help="subtracted from a token's logit once per time it was already generated in "
                                             "this turn (vLLM/OpenAI semantics); the GRPO trainer reproduces it")
    presence_penalty: float = in_range(0.0, 2.0, default=0.0,
                                       help="subtracted from the logit of every token already generated in this turn")
    constrain: str = one_of("none", "protocol", default="none",
                            help="'protocol': constrain each turn to the protocol's grammar (vLLM structured "
                                 "outputs), so even an untrained model writes well-formed turns")


@dataclass
class EngineConfig:
    kind: str = one_of("vllm", "openai", default="vllm")
    # vllm
    num_engines: int = at_least(1, default=1)
    kv_cache_space_gb: float = positive(default=1.0, help="CPU: VLLM_CPU_KVCACHE_SPACE")
    gpu_memory_utilization: float = in_range(0.05, 0.99, default=0.85)
    tensor_parallel_size: int = at_least(1, default=1)
    enforce_eager: bool = True
    max_num_seqs: int = at_least(1, default=128)
    block_size: int = at_least(0, default=0, help="KV cache block size; 0 = vLLM's default (CPU: 128). "
                                                  "Smaller blocks re-use more of a prefix across turns")
    logprobs_mode: str = one_of("raw_logprobs", "processed_logprobs", default="processed_logprobs",
                                help="rollout logprobs before (raw) or after temperature/top-p; the GRPO "
                                     "trainer trains the tempered distribution, so processed")
    weight_transfer: str = one_of("disk", "nccl", "ipc", default="disk",
                                  help="how trainer weights reach vLLM: reload from a dir, or vLLM's "
                                       "weight-transfer engine (GPU)")
    # openai-compatible endpoint
    base_url: str = ""
    api: str = one_of("completions", "chat", default="completions",
                      help="completions: token ids in/out (vLLM servers, token-exact); chat: messages "
                           "in, text out (frontier APIs; ids re-tokenized locally)")
    api_key_env: str = "OPENAI_API_KEY"
    model_name: str = ""              # the name the endpoint serves; defaults to model.path
    request_timeout_s: float = positive(default=120.0)
    max_retries: int = at_least(0, default=4)
    max_concurrency: int = at_least(1, default=32)
    requests_per_minute: int = at_least(0, default=0)
    tokens_per_minute: int = at_least(0, default=0)


@dataclass
class EpisodeConfig:
    max_turns: int = at_least(1, default=10)
    episode_timeout_s: float = positive(default=600.0, help="wall-clock limit of one episode")
    max_context_tokens: int = at_least(256, default=4096)
    min_turn_tokens: int = at_least(1, default=16,
                                    help="end the episode (context_limit) when fewer tokens are left for a turn")


@dataclass
class RolloutConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    num_workers: int = at_least(1, default=1)
    episodes_per_worker: int = at_least(1, default=64, help="concurrent episodes per worker")
