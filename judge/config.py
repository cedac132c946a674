"""Config of the judge pool: which backend scores trajectories, and the reward formula's weights."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.fields import at_least, in_range, one_of, positive


def _default_weights() -> dict[str, float]:
    return {
        "task_completion": 0.25, "faithfulness": 0.2, "completeness": 0.2, "concision": 0.1,
        "actionability": 0.1, "command_efficiency": 0.1, "protocol_compliance": 0.05,
    }


def _default_penalties() -> dict[str, float]:
    return {"hallucination": 0.5, "premature_stop": 0.3, "out_of_scope": 0.5, "looping": 0.2}


@dataclass
class JudgeConfig:
    backend: str = one_of("rules", "vllm", "openai", default="rules")
    model_path: str = ""             # vllm backend: a local HF directory (or "tiny")
    base_url: str = ""               # openai backend
    api_key_env: str = "OPENAI_API_KEY"
    model_name: str = ""
    num_workers: int = at_least(1, default=1)
    max_concurrency: int = at_least(1, default=16)
    requests_per_minute: int = at_least(0, default=0, help="0 = unlimited")
    tokens_per_minute: int = at_least(0, default=0, help="0 = unlimited")
    request_timeout_s: float = positive(default=120.0)
    max_retries: int = at_least(0, default=4, help="openai backend: the SDK's retries (backoff, Retry-After)")
    samples: int = at_least(1, default=1, help="k-sample voting per trajectory")
    temperature: float = in_range(0.0, 2.0, default=0.0)
    max_tokens: int = at_least(16, default=1024)
    max_model_len: int = at_least(512, default=8192, help="vllm backend: context of the judge engine")
    kv_cache_space_gb: float = positive(default=1.0, help="vllm backend on CPU: KV cache (GiB)")
    rationale_max_chars: int = at_least(8, default=160, help="LLM backends: bound of each rationale string "
                                        "in the verdict schema (keeps verdicts within max_tokens)")
    response_format: str = one_of("json_schema", "json_object", "text", default="json_schema",
                                  help="openai backend: json_schema sends the verdict schema (strict structured "
                                       "outputs); json_object or text for endpoints without them")
    invalid_verdict_retries: int = at_least(0, default=2, help="LLM backends: asks again after a reply that "
                                            "fails the verdict schema; then the trajectory is unjudgeable")
    cache_dir: str = ""              # default: <run dir>/judge_cache
    weights: dict[str, float] = field(default_factory=_default_weights)
    penalties: dict[str, float] = field(default_factory=_default_penalties)
