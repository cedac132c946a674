"""Configs of the rollout side: sandboxes, inference engines, sampling and the episode loop."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from terminus.fields import at_least, in_range, one_of, positive


@dataclass
class SandboxConfig:
    backend: str = one_of("bwrap", "docker", "podman", "local", default="bwrap",
                          help="where model commands run; 'local' has no isolation")
    allow_local: bool = False  # 'local' refuses to start unless this is true
    command_timeout_s: float = positive(default=60.0, help="wall-clock limit per command")
    memory_limit_mb: int = at_least(16, default=2048)
    max_processes: int = at_least(8, default=256)
    cpu_time_limit_s: int = at_least(1, default=300)
    output_limit_bytes: int = at_least(256, default=16384,
                                       help="observation cap; head+tail kept, middle dropped")
    image: str = "terminus-base:latest"  # docker/podman: default image when a task names none
    workdir: str = "/work/repo"          # where the task repository appears inside the sandbox


@dataclass
class SamplingConfig:
    temperature: float = in_range(0.0, 5.0, default=1.0)
    top_p: float = in_range(0.0, 1.0, default=1.0)
    top_k: int = -1
    max_tokens_per_turn: int = at_least(1, default=256)
    seed: Optional[int] = None


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
    # openai-compatible endpoint
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    model_name: str = ""              # the name the endpoint serves; defaults to model.path
    request_timeout_s: float = positive(default=120.0)
    max_retries: int = at_least(0, default=4)
    max_concurrency: int = at_least(1, default=32)


@dataclass
class EpisodeConfig:
    max_turns: int = at_least(1, default=10)
    episode_timeout_s: float = positive(default=600.0, help="wall-clock limit of one episode")
    max_context_tokens: int = at_least(256, default=4096)


@dataclass
class RolloutConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    num_workers: int = at_least(1, default=1)
    episodes_per_worker: int = at_least(1, default=64, help="concurrent episodes per worker")
