"""The engine seam over any OpenAI-compatible endpoint (core.openai_api.Endpoint: the `openai` SDK
with its retries and timeouts, plus concurrency and rate limits).

Two APIs (rollout.engine.api):
- "completions": token ids in, token ids out (vLLM/SGLang servers: `prompt` as ids,
  `return_token_ids`, per-token logprobs). Token-exact, like the in-process engine.
- "chat": messages in, text out (frontier APIs, teachers). The ids are the local tokenizer's
  encoding of the returned text, so the trajectory is marked `token_exact: False`; logprobs are
  the endpoint's when it returns them, else 0.0.
"""
from __future__ import annotations

from typing import Any

from rollout.engine.base import EngineError, FixedWeights, Generation, Sampling


class OpenAIEngine(FixedWeights):
    def __init__(self, client, *, api: str = "completions", tokenizer: Any = None):
        if api not in ("completions", "chat"):
            raise ValueError(f"rollout.engine.api must be 'completions' or 'chat', not {api!r}")
        if api == "chat" and tokenizer is None:
            raise ValueError("the chat API needs a tokenizer to turn replies into token ids")
        self.client = client
        self.api = api
        self.tokenizer = tokenizer

    @staticmethod
    def from_config(cfg, tokenizer: Any = None) -> "OpenAIEngine":
        """From a RunConfig: rollout.engine.{base_url, model_name, api_key_env, timeouts, limits}."""
        from core.openai_api import Endpoint
        e = cfg.rollout.engine
        return OpenAIEngine(Endpoint.from_config(e, e.model_name or cfg.model.path), api=e.api, tokenizer=tokenizer)

    def _params(self, s: Sampling) -> dict[str, Any]:
        p: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
        if s.frequency_penalty or s.presence_penalty:
            p.update(frequency_penalty=s.frequency_penalty, presence_penalty=s.presence_penalty)
        if s.stop:
            p["stop"] = list(s.stop)
        if s.seed is not None:
            p["seed"] = s.seed
        return p

    def _vllm_extras(self, s: Sampling) -> dict[str, Any]:
        """Parameters only vLLM-compatible servers accept (the completions API targets those); they travel
        in the SDK's `extra_body`."""
        p: dict[str, Any] = {"include_stop_str_in_output": True, "return_token_ids": True}
        if s.top_k > 0:
            p["top_k"] = s.top_k
        if s.min_tokens:
            p["min_tokens"] = s.min_tokens
        if s.ignore_eos:
            p["ignore_eos"] = True
        return {**p, **self._constraint(s)}

    @staticmethod
    def _constraint(s: Sampling) -> dict[str, Any]:
        """vLLM's structured outputs for a regex-constrained turn (sampling.constrain); {} when unconstrained."""
        return {"structured_outputs": {"regex": s.regex}} if s.regex else {}

    async def generate(self, prompt_ids: list[int], sampling: Sampling,
                       messages: list[dict[str, str]] | None = None) -> Generation:
        from core.openai_api import EndpointError
        try:
            if self.api == "completions":
                return self._from_completion(await self.client.completions(
                    list(prompt_ids), logprobs=1, **self._params(sampling), extra_body=self._vllm_extras(sampling)))
            if messages is None:
                raise EngineError("the chat API needs the episode's messages")
            # a regex constraint is the one vLLM extra a chat call sends (asked for: sampling.constrain)
            extra = self._constraint(sampling)
            return self._from_chat(await self.client.chat(messages, logprobs=True, **self._params(sampling),
                                                          **({"extra_body": extra} if extra else {})), sampling)
        except EndpointError as e:
            raise EngineError(str(e)) from None

    def _from_completion(self, resp: Any) -> Generation:
        try:
            choice = resp.choices[0]
            ids = getattr(choice, "token_ids", None)   # a vLLM extra field
            if ids is None:
                raise EngineError("the endpoint returned no token_ids: the completions API needs a vLLM-compatible "
                                  "server (return_token_ids); use rollout.engine.api=chat for other endpoints")
            lps = (choice.logprobs.token_logprobs if choice.logprobs else None) or []
            if len(lps) != len(ids):
                raise EngineError(f"endpoint returned {len(ids)} token ids but {len(lps)} logprobs")
            return Generation(token_ids=list(ids), logprobs=[float(x or 0.0) for x in lps],
                              finish_reason=choice.finish_reason or "stop",
                              stop_reason=getattr(choice, "stop_reason", None))
        except (AttributeError, IndexError, TypeError) as e:
            raise EngineError(f"malformed completions response ({type(e).__name__}: {e}): {str(resp)[:300]}") from None

    def _from_chat(self, resp: Any, sampling: Sampling) -> Generation:
        try:
            choice = resp.choices[0]
            text = choice.message.content or ""
        except (AttributeError, IndexError, TypeError) as e:
            raise EngineError(f"malformed chat response ({type(e).__name__}: {e}): {str(resp)[:300]}") from None
        finish = choice.finish_reason or "stop"
        # Chat endpoints drop the stop string; put it back so the turn text is the complete block.
        if finish == "stop" and sampling.stop:
            opened = [s for s in sampling.stop if s.replace("</", "<") in text and not text.rstrip().endswith(s)]
            if opened:
                text = text + opened[0]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        content = (choice.logprobs.content if choice.logprobs else None) or []
        lps = [float(c.logprob) for c in content]
        if len(lps) != len(ids):  # another tokenizer's logprobs cannot be aligned with ours
            lps = [0.0] * len(ids)
        return Generation(token_ids=ids, logprobs=lps, finish_reason=finish, stop_reason=None, token_exact=False)

    async def close(self) -> None:
        await self.client.close()
