"""Inference engines behind one seam (`Engine.generate(prompt_ids, sampling) -> Generation`).

    engine = make_engine(cfg, tokenizer)   # cfg.rollout.engine.kind: "vllm" (Ray actor) | "openai"
"""
from __future__ import annotations

from rollout.engine.base import Engine, EngineError, Generation, Sampling

__all__ = ["Engine", "EngineError", "Generation", "Sampling", "make_engine"]


def make_engine(cfg, tokenizer=None):
    """The configured engine. vllm starts a VLLMEngine Ray actor (Ray must be initialised)."""
    kind = cfg.rollout.engine.kind
    if kind == "vllm":
        from rollout.engine.vllm_engine import start_engine_actor
        return start_engine_actor(cfg)
    if kind == "openai":
        from rollout.engine.openai_engine import OpenAIEngine
        return OpenAIEngine.from_config(cfg, tokenizer)
    raise ValueError(f"unknown rollout.engine.kind {kind!r}; use vllm or openai")
