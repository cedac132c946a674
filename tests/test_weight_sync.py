"""Weight sync on CPU: what the GPU streaming path sends matches what the disk path writes, the
engine's split update keeps its pause/resume discipline, and config alone picks the path.

The NCCL/IPC transfer itself needs GPUs and is not run here (see docs/trainer.md "Weight sync").
"""
import asyncio
import os

import pytest
import torch
from safetensors import safe_open

from rl.group import TrainerGroup
from rl.weight_sync import FSDPWeightSource, RayEngineClient, transfer_world_size
from rollout.engine.vllm_engine import VLLMEngine, check_weight_transfer
from terminus.config import load_config
from core.model import LM_HEAD_WEIGHT, resolve_model_path, save_hf_weights


def tiny_model():
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny"), dtype=torch.float32)
    assert model.config.tie_word_embeddings   # the case that needs an explicit lm_head
    return model


def disk_export(state_dict, tmp_path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of what the disk path (TrainerWorker.write_engine_weights) writes."""
    out = {}
    for path in save_hf_weights(state_dict, tmp_path, tie_word_embeddings=True):
        with safe_open(str(path), "pt") as f:
            out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return out


def check_source(source: FSDPWeightSource, full_state_dict, tmp_path, dtype: torch.dtype) -> None:
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerWeightTransferEngine

    meta = source.metadata()
    sent = list(source)
    assert [(n, t.dtype, tuple(t.shape)) for n, t in sent] == [(m.name, m.dtype, m.shape) for m in meta]
    assert all(m.dtype == dtype for m in meta)
    assert {m.name: m.shape for m in meta} == disk_export(full_state_dict, tmp_path)
    assert [m.name for m in meta].count(LM_HEAD_WEIGHT) == 1
    tensors = dict(sent)
    assert torch.equal(tensors[LM_HEAD_WEIGHT], tensors["model.embed_tokens.weight"])
    # vLLM's own checks: the sender's metadata-vs-iteration check and the per-layer grouping.
    assert len(list(NCCLTrainerWeightTransferEngine._checked_iter(source, meta))) == len(meta)
    assert sum(len(names) for names, _ in source.iter_groups()) == len(meta)


def test_source_matches_disk_export(tmp_path):
    model = tiny_model()
    check_source(FSDPWeightSource(model, tie_word_embeddings=True, dtype=torch.bfloat16), model.state_dict(),
                 tmp_path, torch.bfloat16)
    # no wire dtype: the parameters' own, unchanged
    source = FSDPWeightSource(model, tie_word_embeddings=True)
    sd = model.state_dict()
    assert all(torch.equal(t, sd[n]) for n, t in source)


def test_fsdp2_source_on_one_gloo_rank(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from core.net import free_port

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = tiny_model()
        reference = {k: v.clone() for k, v in model.state_dict().items()}
        mesh = init_device_mesh("cpu", (1,))
        for layer in model.model.layers:   # as TrainerWorker.setup shards it
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert isinstance(next(model.parameters()), DTensor)
        source = FSDPWeightSource(model, tie_word_embeddings=True, dtype=torch.bfloat16,
                                  device=torch.device("cpu"))
        check_source(source, reference, tmp_path, torch.bfloat16)
        for name, t in source:   # gathered full tensors, not shards
            assert not isinstance(t, DTensor)
            key = "model.embed_tokens.weight" if name == LM_HEAD_WEIGHT else name
            assert torch.equal(t, reference[key].to(torch.bfloat16))
    finally:
        dist.destroy_process_group()


class FakeHandle:
    """An engine actor handle whose .remote calls are recorded (and return their arguments)."""

    def __init__(self, calls: list, i: int):
        self.calls, self.i = calls, i

    def __getattr__(self, method):
        class Method:
            def remote(_, *args):
                self.calls.append((self.i, method, args))
                return args
        return Method()


class LocalClient(RayEngineClient):
    def _all(self, calls):
        return calls


def test_client_offsets_each_engine_and_finishes_with_the_version():
    calls: list = []
    client = LocalClient([FakeHandle(calls, 0), FakeHandle(calls, 1)], tensor_parallel_size=2)
    assert transfer_world_size(2, 2) == 5
    client.init_weight_transfer_engine({"master_address": "h", "master_port": 1, "rank_offset": 1,
                                        "world_size": 5})
    assert [(i, a[0]["rank_offset"]) for i, m, a in calls] == [(0, 1), (1, 3)]
    calls.clear()
    client.init_weight_transfer_engine({"packed": False})   # ipc: no ranks to offset
    assert [a[0] for _, _, a in calls] == [{"packed": False}] * 2
    calls.clear()
    client.version = 7
    client.start_weight_update()
    client.update_weights({"names": []})
    client.finish_weight_update()
    assert [(i, m, a) for i, m, a in calls if i == 0] == [
        (0, "start_weight_update", ()), (0, "receive_weights", ({"names": []},)), (0, "finish_weight_update", (7,))]


class FakeLLM:
    """The AsyncLLM calls the engine's weight methods make, in order."""

    def __init__(self):
        self.calls: list[str] = []

    def __getattr__(self, name):
        async def call(*args, **kwargs):
            self.calls.append(name)
        return call


def fake_engine() -> VLLMEngine:
    engine = VLLMEngine.__new__(VLLMEngine)   # no AsyncLLM: the discipline around it is what is tested
    engine.llm, engine.weight_transfer, engine._version = FakeLLM(), "nccl", 0
    engine._weights_lock, engine._update_started = asyncio.Lock(), 0.0
    return engine


def test_engine_split_update_pauses_then_resumes_and_excludes_disk_reloads(tmp_path):
    engine = fake_engine()

    async def run():
        await engine.start_weight_update()
        disk = asyncio.create_task(engine.update_weights(str(tmp_path), 9))   # must wait for finish
        await engine.receive_weights({"names": []})
        await asyncio.sleep(0.01)
        assert not disk.done() and await engine.policy_version() == 0
        out = await engine.finish_weight_update(3)
        assert out["policy_version"] == 3
        await disk

    asyncio.run(run())
    assert engine.llm.calls == [
        "pause_generation", "start_weight_update", "update_weights", "finish_weight_update",
        "reset_prefix_cache", "resume_generation",
        "pause_generation", "collective_rpc", "reset_prefix_cache", "resume_generation"]
    assert engine._version == 9 and not engine._weights_lock.locked()


def test_engine_refuses_chunks_outside_an_update():
    with pytest.raises(RuntimeError, match="start_weight_update first"):
        asyncio.run(fake_engine().receive_weights({"names": []}))


def test_cpu_fails_fast_for_streaming_backends():
    for backend in ("nccl", "ipc"):
        with pytest.raises(ValueError, match=r"rollout\.engine\.weight_transfer.*"
                                             r"use rollout\.engine\.weight_transfer=disk on CPU"):
            check_weight_transfer(backend, gpus=False)
        check_weight_transfer(backend, gpus=True)
    check_weight_transfer("disk", gpus=False)


def test_disk_is_the_default_path(tmp_path, monkeypatch):
    import ray

    cfg = load_config("tiny_cpu")
    assert load_config().rollout.engine.weight_transfer == cfg.rollout.engine.weight_transfer == "disk"
    group = TrainerGroup.__new__(TrainerGroup)   # no ranks: only the routing is tested
    group.cfg, group.workers = cfg, []
    done: list = []
    monkeypatch.setattr(group, "write_engine_weights", lambda path: done.append(("write_engine_weights", str(path))))
    monkeypatch.setattr(group, "_all", lambda method, *args: done.append((method, args)))
    monkeypatch.setattr(ray, "get", lambda refs: refs)
    calls: list = []

    class Engine:
        handle = FakeHandle(calls, 0)

    group.init_weight_transfer([Engine()])
    group.push_weights([Engine()], 4, tmp_path / "latest")
    assert done == [("write_engine_weights", str(tmp_path / "latest"))]   # the weights only, no HF export
    assert calls == [(0, "update_weights", (str(tmp_path / "latest"), 4))]
