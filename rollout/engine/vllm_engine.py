"""The vLLM engine: one `AsyncLLM` serving every concurrent episode (continuous batching), usable
in-process (`VLLMEngine`) or in a Ray actor (wrapped by `RayEngine`); both are built by
rollout.engine.make_engine from the run config. `start_async_llm` is the one vLLM construction
(the judge's engine uses it too).

Weight update API (used by the trainer; stable):
    await actor.update_weights.remote(path, version)   # path: dir written by core.model.save_hf_weights
    await actor.policy_version.remote() -> int
GPU clusters can stream weights instead of writing them to disk, through vLLM's weight-transfer
engine (engine.weight_transfer = "nccl" or "ipc"):
    await actor.init_weight_transfer.remote(init_info)   # once: join the trainer's NCCL group
    await actor.start_weight_update.remote()             # per sync: pause generation, prepare
    await actor.receive_weights.remote(update_info)      # names/dtypes/shapes, during the broadcast
    await actor.finish_weight_update.remote(version)     # finalise, reset caches, version, resume
driven by the trainer through rl/weight_sync.py (vLLM's trainer-side weight-transfer engine).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

from rollout.engine.base import EngineError, Generation, Sampling

log = logging.getLogger(__name__)


def start_async_llm(model_path: str, *, kv_cache_space_gb: float, gpu_only: dict[str, Any] | None = None,
                    **engine_args: Any) -> tuple[Any, dict[str, Any]]:
    """The one vLLM construction, shared by the rollout engine and the judge engine (judge.vllm_judge):
    an AsyncLLM for `model_path`, built where it will run (it spawns workers). Returns (llm, info).

    On CPU vLLM reads its KV cache size (GiB, integer) from VLLM_CPU_KVCACHE_SPACE in the engine's
    process, set here from `kv_cache_space_gb`, and the `gpu_only` arguments (memory fraction, sleep
    mode, weight transfer) are left out. `engine_args` are vLLM's AsyncEngineArgs, given in full by
    the caller from its config (no defaults here).
    """
    import torch
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, int(round(kv_cache_space_gb))))
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    args = dict(engine_args, **(gpu_only or {})) if on_gpu else dict(engine_args)
    started = time.monotonic()
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(model=model_path, **args))
    memory = (f"gpu_memory_utilization={args.get('gpu_memory_utilization', 'vLLM default')}" if on_gpu
              else f"VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB")
    info = {"model": model_path, "device": "gpu" if on_gpu else "cpu", "memory": memory,
            **{k: args[k] for k in ("dtype", "max_model_len", "max_num_seqs") if k in args},
            "start_s": round(time.monotonic() - started, 1), "placement_group": _placement_group()}
    log.warning("vLLM engine ready: %s", info)
    return llm, info


def _placement_group() -> str | None:
    """The id of the placement group this process's Ray actor runs in (None outside one)."""
    try:
        import ray
        return ray.get_runtime_context().get_placement_group_id() if ray.is_initialized() else None
    except Exception:   # noqa: BLE001 - diagnostics only
        return None


class VLLMEngine:
    """An AsyncLLM with the engine seam's methods, built from the run config (model, seed and
    rollout.engine). Build it where it will run (it spawns workers): in-process, or in a Ray actor
    through rollout.engine.make_engine(cfg, actor=True)."""

    api = "completions"   # token ids in, token ids out

    def __init__(self, cfg):
        from core.model import resolve_model_path
        e = cfg.rollout.engine
        gpu_only: dict[str, Any] = {
            "gpu_memory_utilization": e.gpu_memory_utilization,
            # Colocated with the trainer, the engine frees its weights and KV cache while the trainer
            # runs (sleep level 1) and takes them back before generating again.
            "enable_sleep_mode": True}
        if e.weight_transfer != "disk":
            gpu_only["weight_transfer_config"] = {"backend": e.weight_transfer}
        self.model_path = str(resolve_model_path(cfg.model.path))
        self.llm, self._info = start_async_llm(
            self.model_path, kv_cache_space_gb=e.kv_cache_space_gb, gpu_only=gpu_only, dtype=cfg.model.dtype,
            max_model_len=cfg.model.max_model_len, seed=cfg.seed, tensor_parallel_size=e.tensor_parallel_size,
            enforce_eager=e.enforce_eager, max_num_seqs=e.max_num_seqs, logprobs_mode=e.logprobs_mode,
            **({"block_size": e.block_size} if e.block_size else {}))
        self.on_gpu = self._info["device"] == "gpu"
        self.weight_transfer = e.weight_transfer
        self._version = 0
        self._ids = itertools.count()
        self.requests = 0     # generations served (the driver reports them per engine)
        self._weights_lock = asyncio.Lock()   # one weight update at a time (see start_weight_update)
        self._update_started = 0.0

    # -- generation ---------------------------------------------------------------------------
    def _params(self, s: Sampling, **more: Any):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        more.setdefault("output_kind", RequestOutputKind.FINAL_ONLY)  # no per-step outputs: one reply per request
        if s.regex:
            from vllm.sampling_params import StructuredOutputsParams
            more["structured_outputs"] = StructuredOutputsParams(regex=s.regex)
        # vLLM CPU crashes the engine ("CPU Generator does not use offset") when a request with its own
        # seed is prefilled in chunks; on CPU randomness comes from the engine-wide seed only.
        seed = s.seed if self.on_gpu else None
        return SamplingParams(max_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              frequency_penalty=s.frequency_penalty, presence_penalty=s.presence_penalty, seed=seed, stop=list(s.stop) or None, include_stop_str_in_output=True,
                              min_tokens=s.min_tokens, ignore_eos=s.ignore_eos, logprobs=0, detokenize=True,
                              **more)

    async def generate(self, prompt_ids: list[int], sampling: Sampling, messages=None) -> Generation:
        version = self._version
        final = None
        try:
            async for out in self.llm.generate({"prompt_token_ids": list(prompt_ids)}, self._params(sampling),
                                               request_id=f"gen-{next(self._ids)}"):
                final = out
        except Exception as e:  # engine died or rejected the request: the episode is marked, not lost
            raise EngineError(f"vLLM generate failed: {type(e).__name__}: {e}") from e
        if final is None:
            raise EngineError("vLLM returned no output")
        o = final.outputs[0]
        ids = list(o.token_ids)
        lps = [float(step[t].logprob) for t, step in zip(ids, o.logprobs or [])]
        if len(lps) != len(ids):
            raise EngineError(f"vLLM returned {len(ids)} tokens but {len(lps)} logprobs")
        self.requests += 1
        return Generation(token_ids=ids, logprobs=lps, finish_reason=o.finish_reason or "abort",
                          stop_reason=o.stop_reason, policy_version=version)

    async def generate_batch(self, prompts: list[list[int]], sampling: list[Sampling]) -> list[Generation]:
        """Many requests at once (plain generation, e.g. the benchmark's baseline)."""
        return list(await asyncio.gather(*(self.generate(p, s) for p, s in zip(prompts, sampling))))

    async def score(self, token_ids: list[int]) -> list[float]:
        """Per-token logprobs of a sequence under the current weights (position 0 has none: 0.0)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0,
                                output_kind=RequestOutputKind.FINAL_ONLY)
        final = None
        async for out in self.llm.generate({"prompt_token_ids": list(token_ids)}, params,
                                           request_id=f"score-{next(self._ids)}"):
            final = out
        plp = final.prompt_logprobs or []
        return [0.0 if step is None else float(step[t].logprob) for t, step in zip(token_ids, plp)]

    # -- weights ------------------------------------------------------------------------------
    async def update_weights(self, path: str, version: int) -> dict[str, Any]:
        """Load new weights in place from an HF safetensors dir (written by core.model.save_hf_weights).

        Requests in flight are frozen (not lost) during the load and continue with the new weights;
        prefix and KV caches are cleared, since they hold states of the old weights.
        """
        if not os.path.isdir(path):
            raise FileNotFoundError(f"update_weights: '{path}' is not a directory of HF safetensors "
                                    "(write it with core.model.save_hf_weights)")
        started = time.monotonic()
        async with self._weights_lock:
            await self.llm.pause_generation(mode="keep", clear_cache=True)
            try:
                await self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
                await self.llm.reset_prefix_cache()
                self._version = int(version)
            finally:
                await self.llm.resume_generation()
        return {"policy_version": self._version, "load_s": time.monotonic() - started}

    # GPU streaming (vLLM's weight-transfer engine). The trainer's rl/weight_sync.py calls these:
    # init_weight_transfer once, then per sync start_weight_update, receive_weights (one or more
    # chunks, concurrently with the trainer's broadcast) and finish_weight_update. A sync spans
    # several actor calls, so `_weights_lock` is taken in start and released in finish: no disk
    # reload or second sync interleaves, and generation stays paused in between.
    async def init_weight_transfer(self, init_info: dict[str, Any]) -> None:
        """GPU: join the trainer's weight-transfer group (vLLM weight_transfer nccl/ipc backends).

        For nccl (vLLM's NCCLWeightTransferInitInfo): master_address, master_port, world_size (trainer
        + all inference workers) and rank_offset (this engine's first rank; the trainer's sender is
        rank 0, so engine i with TP t starts at 1 + i*t). Blocks until the trainer joins.
        Requires rollout.engine.weight_transfer != "disk".
        """
        if self.weight_transfer == "disk":
            raise RuntimeError("init_weight_transfer needs rollout.engine.weight_transfer=nccl or ipc "
                               "(the engine was built for disk reloads)")
        from vllm.distributed.weight_transfer.base import WeightTransferInitRequest
        await self.llm.init_weight_transfer_engine(WeightTransferInitRequest(init_info=init_info))

    async def start_weight_update(self) -> None:
        """Pause generation (requests kept), then prepare the model to receive a full set of weights."""
        await self._weights_lock.acquire()
        self._update_started = time.monotonic()
        try:
            await self.llm.pause_generation(mode="keep", clear_cache=True)
        except BaseException:
            self._weights_lock.release()
            raise
        try:
            await self.llm.start_weight_update()
        except BaseException:
            await self._end_update()
            raise

    async def receive_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Receive one chunk of weights (nccl: names/dtype_names/shapes, then the broadcast).

        The trainer broadcasts while this runs (both sides block in the collective). On failure the
        engine stays paused: its weights are partly new, and generating from them would be wrong.
        """
        if not self._weights_lock.locked():
            raise RuntimeError("receive_weights outside a weight update: call start_weight_update first")
        from vllm.distributed.weight_transfer.base import WeightTransferUpdateRequest
        await self.llm.update_weights(WeightTransferUpdateRequest(update_info=update_info))

    async def finish_weight_update(self, version: int) -> dict[str, Any]:
        """Finalise the new weights, clear caches of the old ones, bump the policy version, resume."""
        if not self._weights_lock.locked():
            raise RuntimeError("finish_weight_update outside a weight update: call start_weight_update first")
        try:
            await self.llm.finish_weight_update(str(version))
            await self.llm.reset_prefix_cache()
            self._version = int(version)
        finally:
            await self._end_update()
        return {"policy_version": self._version, "load_s": time.monotonic() - self._update_started}

    async def _end_update(self) -> None:
        try:
            await self.llm.resume_generation()
        finally:
            self._weights_lock.release()

    async def sleep(self) -> bool:
        """Free device memory for a colocated trainer (GPU only; a no-op on CPU). True if it slept."""
        if not self.on_gpu:
            return False
        await self.llm.sleep(level=1)
        return True

    async def wake_up(self) -> None:
        if self.on_gpu:
            await self.llm.wake_up()

    async def policy_version(self) -> int:
        return self._version

    async def reset_prefix_cache(self) -> None:
        """Forget cached prefixes (benchmarks: a baseline must not reuse another run's KV blocks)."""
        await self.llm.reset_prefix_cache()

    async def info(self) -> dict[str, Any]:
        return dict(self._info, policy_version=self._version, requests=self.requests)

    def shutdown(self) -> None:
        self.llm.shutdown()

    async def close(self) -> None:
        """In-process: stop vLLM (the OpenAI engine's close closes its client)."""
        self.shutdown()


def check_weight_transfer(weight_transfer: str, gpus: bool) -> None:
    """vLLM's weight-transfer engine moves CUDA tensors: without GPUs only the disk path exists."""
    if weight_transfer != "disk" and not gpus:
        raise ValueError(f"rollout.engine.weight_transfer={weight_transfer!r} streams weights between GPUs "
                         "(vLLM's weight-transfer engine), but no CUDA GPU is available; "
                         "use rollout.engine.weight_transfer=disk on CPU")


def start_actor(cfg, options: dict[str, Any] | None = None) -> "RayEngine":
    """A VLLMEngine in a Ray actor (Ray must be initialised); use rollout.engine.make_engine.

    `options` place it (cluster.resources Layout.options("engine", i): its placement-group bundle
    and GPU share); without them it takes tensor_parallel_size GPUs when the cluster has any."""
    import ray
    opts: dict[str, Any] = {"max_concurrency": 1000}
    if options is None:
        opts.update(num_cpus=0, num_gpus=cfg.rollout.engine.tensor_parallel_size if cluster_has_gpus() else 0)
    else:
        opts.update(options)
    return RayEngine(ray.remote(VLLMEngine).options(**opts).remote(cfg))


def cluster_has_gpus() -> bool:
    import ray
    return ray.cluster_resources().get("GPU", 0) > 0


class RayEngine:
    """The engine seam over a VLLMEngine Ray actor: what episodes and workers hold."""

    api = "completions"

    def __init__(self, handle):
        self.handle = handle

    async def generate(self, prompt_ids: list[int], sampling: Sampling, messages=None) -> Generation:
        import ray
        try:
            return await self.handle.generate.remote(prompt_ids, sampling)
        except ray.exceptions.RayTaskError as e:
            raise EngineError(str(e.cause) if e.cause else str(e)) from None
        except ray.exceptions.RayActorError as e:
            raise EngineError(f"vLLM engine actor died: {e}") from None

    async def generate_batch(self, prompts, sampling) -> list[Generation]:
        return await self.handle.generate_batch.remote(prompts, sampling)

    async def score(self, token_ids: list[int]) -> list[float]:
        return await self.handle.score.remote(token_ids)

    async def update_weights(self, path: str, version: int) -> dict[str, Any]:
        return await self.handle.update_weights.remote(path, version)

    async def sleep(self) -> bool:
        return await self.handle.sleep.remote()

    async def wake_up(self) -> None:
        await self.handle.wake_up.remote()

    async def policy_version(self) -> int:
        return await self.handle.policy_version.remote()

    async def reset_prefix_cache(self) -> None:
        await self.handle.reset_prefix_cache.remote()

    async def info(self) -> dict[str, Any]:
        return await self.handle.info.remote()

    def kill(self) -> None:
        import ray
        try:
            ray.get(self.handle.shutdown.remote(), timeout=30)
        except Exception:
            pass
        ray.kill(self.handle)
