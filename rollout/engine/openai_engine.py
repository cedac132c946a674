"""The engine seam over any OpenAI-compatible endpoint (core.openai_api.OpenAIClient does the
retries, timeouts, concurrency and rate limits).

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
        from core.openai_api import OpenAIClient
        e = cfg.rollout.engine
        client = OpenAIClient(e.base_url, e.model_name or cfg.model.path, api_key_env=e.api_key_env,
                              timeout_s=e.request_timeout_s, max_retries=e.max_retries,
                              max_concurrency=e.max_concurrency, requests_per_minute=e.requests_per_minute,
                              tokens_per_minute=e.tokens_per_minute)
        return OpenAIEngine(client, api=e.api, tokenizer=tokenizer)

    def _params(self, s: Sampling) -> dict[str, Any]:
        p: dict[str, Any] = {"max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p}
        if s.stop:
            p["stop"] = list(s.stop)
        if s.seed is not None:
            p["seed"] = s.seed
        return p

    def _vllm_extras(self, s: Sampling) -> dict[str, Any]:
        """Parameters only vLLM-compatible servers accept (the completions API targets those)."""
        p: dict[str, Any] = {"include_stop_str_in_output": True, "return_token_ids": True}
        if s.top_k > 0:
            p["top_k"] = s.top_k
        if s.min_tokens:
            p["min_tokens"] = s.min_tokens
        if s.ignore_eos:
            p["ignore_eos"] = True
        if s.regex:
            p["structured_outputs"] = {"regex": s.regex}
        return p

    async def generate(self, prompt_ids: list[int], sampling: Sampling,
                       messages: list[dict[str, str]] | None = None) -> Generation:
        from core.openai_api import EndpointError
        try:
            if self.api == "completions":
                return self._from_completion(await self.client.completions(
                    list(prompt_ids), logprobs=1, **self._params(sampling), **self._vllm_extras(sampling)))
            if messages is None:
                raise EngineError("the chat API needs the episode's messages")
            return self._from_chat(await self.client.chat(messages, logprobs=True, **self._params(sampling)),
                                   sampling)
        except EndpointError as e:
            raise EngineError(str(e)) from None

    def _from_completion(self, resp: dict[str, Any]) -> Generation:
        try:
            choice = resp["choices"][0]
            ids = choice.get("token_ids")
            if ids is None:
                raise EngineError("the endpoint returned no token_ids: the completions API needs a vLLM-compatible "
                                  "server (return_token_ids); use rollout.engine.api=chat for other endpoints")
            lps = (choice.get("logprobs") or {}).get("token_logprobs") or []
            if len(lps) != len(ids):
                raise EngineError(f"endpoint returned {len(ids)} token ids but {len(lps)} logprobs")
            return Generation(token_ids=list(ids), logprobs=[float(x or 0.0) for x in lps],
                              finish_reason=choice.get("finish_reason") or "stop",
                              stop_reason=choice.get("stop_reason"))
        except (KeyError, IndexError, TypeError) as e:
            raise EngineError(f"malformed completions response ({type(e).__name__}: {e}): {str(resp)[:300]}") from None

    def _from_chat(self, resp: dict[str, Any], sampling: Sampling) -> Generation:
        try:
            choice = resp["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError) as e:
            raise EngineError(f"malformed chat response ({type(e).__name__}: {e}): {str(resp)[:300]}") from None
        finish = choice.get("finish_reason") or "stop"
        # Chat endpoints drop the stop string; put it back so the turn text is the complete block.
        if finish == "stop" and sampling.stop:
            opened = [s for s in sampling.stop if s.replace("</", "<") in text and not text.rstrip().endswith(s)]
            if opened:
                text = text + opened[0]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        content = (choice.get("logprobs") or {}).get("content") or []
        lps = [float(c.get("logprob", 0.0)) for c in content]
        if len(lps) != len(ids):  # another tokenizer's logprobs cannot be aligned with ours
            lps = [0.0] * len(ids)
        return Generation(token_ids=ids, logprobs=lps, finish_reason=finish, stop_reason=None, token_exact=False)

    async def close(self) -> None:
        await self.client.close()
