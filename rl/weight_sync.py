"""GPU weight sync without a disk round trip: the trainer side of vLLM's weight-transfer engine.

`rollout.engine.weight_transfer` picks the path (rl/group.py `TrainerGroup.push_weights`):
- disk: `write_engine_weights` (rl/export.py) writes the safetensors, each engine reloads them in place (CPU and GPU).
- nccl: trainer rank 0 broadcasts every tensor to the engines' workers over an NCCL group
  (rank 0 = the sender, engine i's workers at ranks 1 + i*tp ...). Needs the sender and the
  engines on different GPUs (NCCL refuses two ranks on one device).
- ipc: CUDA IPC handles to the trainer's tensors; for engines on the same GPUs as the trainer.

Written against vLLM 0.32's `vllm.distributed.weight_transfer` API: every trainer rank builds the
trainer engine with `WeightTransferTrainerFactory.trainer_init(init_info, client=, source=)` and
calls `send_weights()` per sync; vLLM drives the engine actors through our client
(`init_weight_transfer_engine`, then per sync `start_weight_update`, `update_weights` concurrently
with the broadcast, `finish_weight_update`). Only the sender (rank 0) calls the client; every rank
iterates the source, since gathering an FSDP shard is a collective.
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch

from core.model import hf_weights

from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource


class FSDPWeightSource(WeightSource):
    """The policy's weights as vLLM's `load_weights` expects them: HF names, full tensors.

    Iterates `named_parameters()` in their fixed order (the same on every rank, so the FSDP
    all-gathers of `full_tensor()` line up), with an explicit lm_head.weight for tied embeddings
    (`core.model.hf_weights`, shared with the disk export). `dtype` is the wire dtype (the
    engine's, e.g. bfloat16: half the bytes of the fp32 master weights; vLLM would round to it on
    load anyway); `device` is where tensors must be for the transport (CUDA for NCCL/IPC), which
    also moves CPU-offloaded shards before their gather.
    """

    def __init__(self, model: torch.nn.Module, *, tie_word_embeddings: bool,
                 dtype: torch.dtype | None = None, device: torch.device | None = None):
        self.model, self.tie = model, tie_word_embeddings
        self.dtype, self.device = dtype, device

    def _items(self, pairs):
        return hf_weights(pairs, tie_word_embeddings=self.tie)

    def metadata(self) -> list[ParamMeta]:
        # DTensor .shape is the global shape: no gather needed to declare it.
        pairs = ((n, (self.dtype or p.dtype, tuple(p.shape))) for n, p in self.model.named_parameters())
        return [ParamMeta(n, dtype, shape) for n, (dtype, shape) in self._items(pairs)]

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self._items((n, self._full(p)) for n, p in self.model.named_parameters())

    def _full(self, p: torch.Tensor) -> torch.Tensor:
        t = p.detach().to(device=self.device, dtype=self.dtype)   # cast the shard: a smaller gather
        full = getattr(t, "full_tensor", None)   # DTensor (FSDP shard): a collective all-gather
        return full() if callable(full) else t


class RayEngineClient:
    """vLLM's `VLLMWeightSyncClient` protocol over our engine actors (rollout/engine/vllm_engine.py).

    Calls every engine and waits for all of them. vLLM builds one init payload for "the workers"
    (rank_offset 1); with several engines each gets its own offset, 1 + i*tp. vLLM's NCCL engine
    calls `finish_weight_update()` without a version, so the policy version of the sync in
    progress is set on the client (`version`) before `send_weights()`.
    """

    def __init__(self, handles: Sequence[Any], tensor_parallel_size: int):
        self.handles, self.tp = list(handles), tensor_parallel_size
        self.version = 0

    def _all(self, calls: list) -> list:
        import ray
        return ray.get(calls)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        def for_engine(i: int) -> dict[str, Any]:
            return dict(init_info, rank_offset=1 + i * self.tp) if "rank_offset" in init_info else init_info
        self._all([h.init_weight_transfer.remote(for_engine(i)) for i, h in enumerate(self.handles)])

    def start_weight_update(self) -> None:
        self._all([h.start_weight_update.remote() for h in self.handles])

    def update_weights(self, update_info: dict[str, Any] | list[dict[str, Any]]) -> None:
        self._all([h.receive_weights.remote(update_info) for h in self.handles])

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        version = int(weight_version) if weight_version is not None else self.version
        self._all([h.finish_weight_update.remote(version) for h in self.handles])


def transfer_world_size(num_engines: int, tensor_parallel_size: int) -> int:
    """The NCCL group: the trainer's sender plus every worker of every engine."""
    return 1 + num_engines * tensor_parallel_size


def trainer_engine(backend: str, *, rank: int, source: FSDPWeightSource, client: RayEngineClient,
                   master_addr: str = "", port: int = 0, world_size: int = 0):
    """Join the weight-transfer group (every trainer rank; blocks on rank 0 until the engines join)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    if backend == "nccl":
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo
        info = NCCLTrainerInitInfo(master_address=master_addr, master_port=port, world_size=world_size, rank=rank)
    elif backend == "ipc":
        from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
        info = IPCTrainerInitInfo(rank=rank)
    else:
        raise ValueError(f"no trainer weight-transfer engine for rollout.engine.weight_transfer={backend!r}")
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source)
