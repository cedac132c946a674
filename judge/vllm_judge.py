"""The local vLLM judge: judge engines in Ray actors, JSON-schema guided decoding so verdicts parse.

On CPU the engine needs `structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True}`
(see PLATFORM.md: otherwise a random model pads with whitespace until max_tokens), and the schema
bounds every string. The schema is judge.llm.verdict_schema, derived from the same pydantic model
that validates the OpenAI judge's replies (docs/rubric.md). The pool adds a timeout around `judge`.
"""
from __future__ import annotations

import itertools
from typing import Any

from judge.llm import VerdictParseError, aggregate, parse_verdict, render_prompt, verdict_schema
from judge.types import Verdict
from rollout.trajectory import Trajectory
from tasks.types import Task


class JudgeEngine:
    """One vLLM AsyncLLM with guided JSON decoding, built from the JudgeConfig (model_path,
    max_model_len, kv_cache_space_gb, max_concurrency) by the rollout engine's vLLM construction
    (rollout.engine.vllm_engine.start_async_llm). Build it where it runs (a Ray actor): it spawns workers."""

    def __init__(self, cfg):
        from transformers import AutoTokenizer

        from core.model import resolve_model_path
        from rollout.engine.vllm_engine import start_async_llm
        path = str(resolve_model_path(cfg.model_path))
        self.llm, self.info = start_async_llm(
            path, kv_cache_space_gb=cfg.kv_cache_space_gb, max_model_len=cfg.max_model_len, seed=0,
            enforce_eager=True, max_num_seqs=cfg.max_concurrency, dtype="bfloat16",
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True})
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self._ids = itertools.count()

    async def generate(self, messages: list[dict[str, str]], schema: dict[str, Any], n: int, temperature: float,
                       max_tokens: int) -> list[tuple[str, str]]:
        """n guided completions of the chat: [(text, finish_reason)]."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        params = SamplingParams(n=n, temperature=temperature, max_tokens=max_tokens,
                                structured_outputs=StructuredOutputsParams(json=schema),
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self.llm.generate(prompt, params, request_id=f"judge-{next(self._ids)}"):
            final = out
        if final is None:
            raise RuntimeError("vLLM returned no output")
        return [(o.text, o.finish_reason or "abort") for o in final.outputs]

    def ready(self) -> bool:
        return True   # answers once __init__ (the engine start-up) is done

    def shutdown(self) -> None:
        self.llm.shutdown()


class VLLMJudge:
    """`cfg.num_workers` JudgeEngine actors, used round-robin, placed in the layout's judge bundles
    when given one (Ray must be initialised: core.raycluster.init_ray)."""

    def __init__(self, cfg, layout=None):
        import ray

        if not cfg.model_path:
            raise ValueError("judge.backend=vllm needs judge.model_path (a local HF directory, or 'tiny')")
        if not ray.is_initialized():
            raise RuntimeError("judge.backend=vllm runs its engines in Ray actors: start Ray first "
                               "(core.raycluster.init_ray)")
        from core.model import resolve_model_path
        resolve_model_path(cfg.model_path)   # a bad path fails here, not in an actor
        self.cfg = cfg
        self.name = f"vllm:{cfg.model_path}"
        from rollout.engine.vllm_engine import cluster_has_gpus
        actor = ray.remote(num_cpus=0, num_gpus=1 if cluster_has_gpus() else 0)(JudgeEngine)
        self.actors = []
        for i in range(cfg.num_workers):
            opts: dict[str, Any] = {"max_concurrency": 1000}
            if layout is not None:
                opts.update(layout.options("judge", i))
            self.actors.append(actor.options(**opts).remote(cfg))
        self._next = itertools.cycle(self.actors)
        self._started = False

    async def ready(self) -> None:
        """Wait until every engine has started (minutes on a busy CPU): start-up is not a request's time."""
        if not self._started:
            import asyncio
            await asyncio.gather(*(a.ready.remote() for a in self.actors))
            self._started = True

    async def judge(self, task: Task, trajectory: Trajectory) -> Verdict:
        messages = render_prompt(task, trajectory)
        schema = verdict_schema(len(task.ground_truth.facts), self.cfg.rationale_max_chars)
        outs = await next(self._next).generate.remote(messages, schema,
                                                       self.cfg.samples, self.cfg.temperature, self.cfg.max_tokens)
        good, errors = [], []
        for text, finish in outs:
            try:
                good.append(parse_verdict(text, task, trajectory, self.name, self.cfg.rationale_max_chars))
            except VerdictParseError as e:
                errors.append(f"{e} (finish_reason={finish})")
        out = aggregate(good, self.name) if good else Verdict.unjudgeable(self.name, f"malformed_json: {errors[0]}")
        out.invalid_replies = len(errors)
        return out

    async def close(self) -> None:
        import ray
        for a in self.actors:
            ray.kill(a)
        self.actors = []
