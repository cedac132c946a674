"""Which subagent to run: parsed from a short spec, checked before any work, opened as an engine.

Specs (optionally `LABEL=SPEC`, e.g. `sft=runs/x/checkpoints/step_4/hf`):
    tiny | base          the embedded tiny model (or cfg.model.path for `base`), vLLM in-process
    PATH                 a Hugging Face checkpoint directory (SFT/RL exports), vLLM in-process
    openai:MODEL@URL     a model behind an OpenAI-compatible endpoint, chat API (frontier APIs)
    vllm-server:MODEL@URL  the same over the token-exact completions API (a `vllm serve` endpoint)
    scripted             the scripted expert teacher (cluster's), for distillation and tests
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from omegaconf import OmegaConf

from core.errors import UserError


class SubagentError(UserError, ValueError):
    """A subagent that cannot be used; raised before any episode starts."""


@dataclass
class SubagentSpec:
    label: str
    kind: str            # "hf" | "openai" | "scripted"
    path: str = ""       # hf: the model dir (or "tiny")
    model: str = ""      # openai: the served model name
    base_url: str = ""
    api: str = "chat"    # openai: "chat" | "completions"


def parse_subagent(text: str, default_model: str = "tiny") -> SubagentSpec:
    label, sep, spec = text.partition("=")
    if not sep or "/" in label or ":" in label:
        label, spec = "", text
    spec = spec.strip()
    if not spec:
        raise SubagentError(f"empty subagent spec {text!r}; use tiny, a checkpoint dir, openai:MODEL@URL or scripted")
    for prefix, api in (("openai:", "chat"), ("vllm-server:", "completions")):
        if spec.startswith(prefix):
            model, at, url = spec[len(prefix):].partition("@")
            if not at or not model or not url:
                raise SubagentError(f"subagent {spec!r}: write {prefix}MODEL@URL, e.g. {prefix}gpt-4o@http://127.0.0.1:8000/v1")
            return SubagentSpec(label or model, "openai", model=model, base_url=url, api=api)
    if spec == "scripted":
        return SubagentSpec(label or "scripted", "scripted")
    path = default_model if spec == "base" else spec
    return SubagentSpec(label or (spec if spec in ("tiny", "base") else Path(spec).name or spec), "hf", path=path)


def check_hf_dir(path: str) -> Path:
    """The resolved checkpoint dir; SubagentError when it is missing or not a complete HF model dir
    (core.model.resolve_model_path names what is missing)."""
    from core.model import ModelPathError, resolve_model_path
    try:
        return Path(resolve_model_path(path))
    except ModelPathError as e:
        raise SubagentError(f"checkpoint {path!r} not found or incomplete: {e} (the trainer's export is "
                            "runs/NAME/hf)") from None


async def preflight(spec: SubagentSpec, cfg: Any) -> None:
    """Fail before any work: a missing checkpoint, an unreachable endpoint, a model it does not serve."""
    if spec.kind == "hf":
        check_hf_dir(spec.path)
    elif spec.kind == "openai":
        from core.openai_api import Endpoint, EndpointError
        client = Endpoint(spec.base_url, spec.model, api_key_env=cfg.rollout.engine.api_key_env,
                          timeout_s=10.0, max_retries=0)
        try:
            await client.check()
        except EndpointError as e:
            raise SubagentError(f"subagent {spec.label}: {e}") from None
        finally:
            await client.close()
    elif spec.kind == "scripted":
        scripted_teacher_class()


def scripted_teacher_class():
    """The scripted expert teacher behind the engine seam (owned by cluster/; reused, not rewritten)."""
    from rollout.teacher import ScriptedTeacher
    return ScriptedTeacher


def tokenizer_for(spec: SubagentSpec, cfg: Any):
    """HF checkpoints bring their tokenizer; endpoints are measured with the run's model tokenizer."""
    from rollout.worker import load_tokenizer
    from core.model import resolve_model_path
    path = check_hf_dir(spec.path) if spec.kind == "hf" else resolve_model_path(cfg.model.path)
    return load_tokenizer(str(path))


def engine_config(spec: SubagentSpec, cfg: Any) -> Any:
    """A copy of the run config pointing rollout.engine (and model.path) at this subagent."""
    c = copy.deepcopy(cfg)
    OmegaConf.set_readonly(c, False)
    if spec.kind == "hf":
        c.model.path = str(check_hf_dir(spec.path))
        c.rollout.engine.kind = "vllm"
    elif spec.kind == "openai":
        c.rollout.engine.kind = "openai"
        c.rollout.engine.base_url = spec.base_url
        c.rollout.engine.model_name = spec.model
        c.rollout.engine.api = spec.api
    return c


@contextlib.asynccontextmanager
async def open_subagent(spec: SubagentSpec, cfg: Any, tasks: list | None = None) -> AsyncIterator[tuple[Any, Any]]:
    """(engine, tokenizer) for the episode loop; the engine is shut down on exit.

    HF checkpoints run in an in-process vLLM engine (callers need the `__main__` guard)."""
    tokenizer = tokenizer_for(spec, cfg)
    if spec.kind == "scripted":
        # It replays the reference solutions of `tasks`; a request it has none for fails that episode.
        teacher = scripted_teacher_class()
        yield teacher(tasks or [], tokenizer, cfg.rollout.episode.max_turns), tokenizer
        return
    from rollout.engine import make_engine
    engine = make_engine(engine_config(spec, cfg), tokenizer)   # hf: vLLM in this process; openai: the endpoint
    try:
        yield engine, tokenizer
    finally:
        await engine.close()
