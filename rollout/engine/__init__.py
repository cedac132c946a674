"""Inference engines behind one seam (`Engine`: generate, plus api / sleep / wake_up / update_weights),
built by one factory from the run config:

    engine = make_engine(cfg, tokenizer)                 # in this process: vLLM or an OpenAI endpoint
    engine = make_engine(cfg, actor=True, options=...)   # vLLM in a Ray actor (a RayEngine client)

cfg.rollout.engine.kind picks the backend: "vllm" (VLLMEngine, from model + rollout.engine + seed)
or "openai" (OpenAIEngine over an endpoint; already remote, so `actor` changes nothing). Trainer
weights reach engines through a `WeightSync` (disk | nccl | ipc by rollout.engine.weight_transfer).
"""
from __future__ import annotations

from typing import Any

from rollout.engine.base import Engine, EngineError, Generation, Sampling, WeightSync

__all__ = ["Engine", "EngineError", "Generation", "Sampling", "WeightSync", "make_engine"]


def make_engine(cfg, tokenizer: Any = None, *, actor: bool = False, options: dict[str, Any] | None = None) -> Engine:
    """The configured engine.

    vllm: with `actor`, a VLLMEngine in a Ray actor (Ray must be initialised), placed by `options`
    (cluster.resources `Layout.options("engine", i)`), returned as a RayEngine; without, a
    VLLMEngine in this process (callers need the `__main__` guard: it spawns workers).
    openai: an OpenAIEngine (the chat API needs `tokenizer`).
    rollout.engine.weight_transfer nccl/ipc is refused before anything loads when there is no GPU.
    """
    kind = cfg.rollout.engine.kind
    if kind == "vllm":
        from rollout.engine import vllm_engine
        if actor:
            gpus = vllm_engine.cluster_has_gpus()
        else:
            import torch
            gpus = torch.cuda.is_available()
        vllm_engine.check_weight_transfer(cfg.rollout.engine.weight_transfer, gpus)
        return vllm_engine.start_actor(cfg, options) if actor else vllm_engine.VLLMEngine(cfg)
    if kind == "openai":
        from rollout.engine.openai_engine import OpenAIEngine
        return OpenAIEngine.from_config(cfg, tokenizer)
    raise ValueError(f"unknown rollout.engine.kind {kind!r}; use vllm or openai")
