"""`terminus train --dry-run` (cluster/plan.py): model shapes, hand-computed memory terms, the context
budget, placement of configs/qwen3_4b.yaml on 8 and 16 GPUs, and overbudget configs rejected."""
from __future__ import annotations

import dataclasses
import math

import pytest
from omegaconf import OmegaConf

from cluster.plan import BYTES_PER_TOKEN, ClusterSpec, PlacementError, context_budget, make_plan, trainer_memory
from core.errors import ConfigError, UserError
from core.model import PUBLISHED_SHAPES, ModelShape, model_shape
from core.protocol import system_prompt
from terminus.cli import main
from terminus.config import load_config

QWEN3_4B = PUBLISHED_SHAPES["Qwen3-4B-Instruct-2507"]
SMALL = ModelShape(vocab_size=10, hidden_size=4, intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=2, tie_word_embeddings=True, max_position_embeddings=64)


def test_qwen3_4b_shape_counts_its_published_parameters():
    # Per layer: q 2560x4096 + k,v 2x2560x1024 + o 4096x2560 + q/k norms 2x128 + 2 norms 2x2560 + MLP 3x2560x9728
    layer = 10_485_760 + 5_242_880 + 10_485_760 + 256 + 5_120 + 74_711_040
    assert QWEN3_4B.layer_params == layer == 100_930_816
    # tied embeddings: 151936 x 2560 once, + 36 layers + the final norm
    assert QWEN3_4B.num_params == 388_956_160 + 36 * layer + 2560 == 4_022_468_096
    assert QWEN3_4B.kv_bytes_per_token(2) == 2 * 36 * 8 * 128 * 2
    # found by the directory's name when the directory is not here; config.json wins when it is
    assert model_shape("/nowhere/Qwen3-4B-Instruct-2507") == QWEN3_4B
    with pytest.raises(UserError, match="not a known published shape"):
        model_shape("/nowhere/SomeModel-7B")


@pytest.mark.parametrize("shape", [model_shape("tiny"), QWEN3_4B])
def test_shape_matches_transformers_parameter_count(shape):
    torch = pytest.importorskip("torch")
    from transformers import Qwen3Config, Qwen3ForCausalLM

    with torch.device("meta"):
        model = Qwen3ForCausalLM(Qwen3Config(**dataclasses.asdict(shape)))
    assert sum(p.numel() for p in model.parameters()) == shape.num_params


def test_model_shape_reads_config_json(tmp_path):
    (tmp_path / "config.json").write_text('{"vocab_size": 10, "hidden_size": 4, "intermediate_size": 8, '
                                          '"num_hidden_layers": 2, "num_attention_heads": 2, '
                                          '"num_key_value_heads": 1, "max_position_embeddings": 64, '
                                          '"tie_word_embeddings": true}')
    assert model_shape(str(tmp_path)) == SMALL   # head_dim = hidden / heads when absent


def test_trainer_memory_hand_computed():
    # SMALL: layer = 4*4 + 2*4*2 + 4*4 + 2*2 + 2*4 + 3*4*8 = 156; params = 40 + 2*156 + 4 = 356
    assert SMALL.layer_params == 156 and SMALL.num_params == 356
    tc = OmegaConf.create({"param_dtype": "bfloat16", "cpu_offload": False, "num_workers": 2,
                           "activation_checkpointing": True, "use_reference_model": False})
    m = trainer_memory(SMALL, tc, "sft", tokens=10, logit_rows=5)
    assert m.sharded_state == 16 * 356 / 2 == 2848
    assert m.gathered_params == 2 * (2 * 156 + 40) == 704
    # per token and layer: 2 bytes x (4h + 3q + 3kv + 4I) = 2 x (16 + 12 + 6 + 32) = 132
    assert m.activations == 10 * (2 * 4 * 2 + 132) == 1480          # layer inputs + one layer's set
    assert m.logits == 5 * 10 * 16
    assert m.total == 2848 + 704 + 1480 + 800 and m.load_peak == 4 * 356
    tc.activation_checkpointing, tc.use_reference_model = False, True
    m = trainer_memory(SMALL, tc, "sft", tokens=10, logit_rows=5)
    assert m.activations == 10 * 2 * 132 and m.reference == 4 * 356


def test_context_budget_counts_turns_observations_and_prompt():
    cfg = load_config("qwen3_4b", ["rollout.episode.max_turns=2", "rollout.sandbox.output_limit_bytes=3000",
                                   "rollout.sampling.max_tokens_per_turn=100"])
    b = context_budget(cfg)
    prompt = math.ceil((len(system_prompt(2).encode()) + 2048) / BYTES_PER_TOKEN)
    assert b["prompt"] == prompt and b["observation"] == 1000 + 32
    # two replies, one observation between them (none after the last turn)
    assert b["need"] == prompt + 2 * 100 + 1 * 1032 and b["context"] == 65536


def _plan(overrides=(), **spec):
    cfg = load_config("qwen3_4b", list(overrides))
    return make_plan(cfg, model_shape(cfg.model.path), ClusterSpec(**spec))


def test_qwen3_4b_fits_one_node_of_8():
    plan = _plan(gpus=8, nodes=1)
    trainers = [a for a in plan.actors if a[0] == "trainer"]
    engine = [a for a in plan.actors if a[0] == "engine"]
    assert len(trainers) == 7 and engine == [("engine", 0, 0, 1.0)]
    assert {a[2] for a in plan.actors} == {0}
    assert 40 * 2**30 < plan.gpu_peaks["trainer"] < 72 * 2**30
    assert plan.engine.kv_tokens > 65536


def test_qwen3_4b_on_two_nodes_of_8():
    plan = _plan(["trainer.num_workers=15"], gpus=16, nodes=2)
    gpus_on = [sum(a[3] for a in plan.actors if a[2] == n) for n in (0, 1)]
    assert gpus_on == [8, 8]
    # more ranks shard the state thinner: 16 x params / 15 < / 7
    assert plan.trainer[0].sharded_state < _plan(gpus=8).trainer[0].sharded_state


def test_colocated_16_gpus_shares_gpu0_between_engine_and_trainer():
    plan = _plan(["cluster.layout=colocated", "trainer.num_workers=16", "rollout.num_workers=16",
                  "rollout.engine.gpu_memory_utilization=0.6"], gpus=16, nodes=2)
    assert ("engine", 0, 0, 0.5) in plan.actors and ("trainer", 0, 0, 0.5) in plan.actors
    assert "engine + trainer state (rollouts)" in plan.gpu_peaks
    # 0.9 x 80 GiB for the engine + 16 x 4.02 B / 16 bytes of trainer state > 90% of the GPU
    with pytest.raises(ConfigError, match="rollout.engine.gpu_memory_utilization=0.9"):
        _plan(["cluster.layout=colocated", "trainer.num_workers=16", "rollout.num_workers=16",
               "rollout.engine.gpu_memory_utilization=0.9"], gpus=16, nodes=2)


@pytest.mark.parametrize("overrides, spec, message", [
    (["model.max_model_len=32768"], {}, "model.max_model_len allows 32768"),
    (["rollout.episode.max_context_tokens=40000"], {}, "rollout.episode.max_context_tokens allows 40000"),
    (["trainer.sft.micro_batch_tokens=65536"], {}, "trainer.sft.micro_batch_tokens"),
    (["trainer.pad_free=false"], {}, "grpo \\(8 full-length rollouts\\)"),
    (["rollout.engine.gpu_memory_utilization=0.1"], {}, "rollout.engine.gpu_memory_utilization=0.1"),
    (["rollout.engine.tensor_parallel_size=2"], {}, "cluster.rollout.num_gpus=2"),
    (["model.max_model_len=300000", "rollout.episode.max_context_tokens=300000"], {}, "max_position_embeddings"),
    ([], {"gpu_memory_gib": 40}, "a trainer rank at the"),
])
def test_overbudget_configs_are_rejected_naming_keys(overrides, spec, message):
    with pytest.raises(ConfigError, match=message):
        _plan(overrides, **spec)


def test_a_layout_larger_than_the_cluster_is_rejected():
    with pytest.raises(PlacementError, match="trainer.num_workers=8 x cluster.trainer.num_gpus=1"):
        _plan(["trainer.num_workers=8"], gpus=8, nodes=1)
    with pytest.raises(PlacementError):
        _plan(["trainer.num_workers=15"], gpus=8, nodes=1)


def test_dry_run_cli(capsys):
    assert main(["train", "-c", "qwen3_4b", "--dry-run", "--gpus", "16", "--nodes", "2",
                 "trainer.num_workers=15"]) == 0
    out = capsys.readouterr().out
    assert "2 node(s) x 8 GPUs" in out and "trainer  0@node" in out and "KV cache" in out
    assert out.rstrip().endswith("ok: the config fits this cluster")
    assert main(["train", "-c", "qwen3_4b", "--dry-run", "model.max_model_len=32768"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("terminus: error: an episode can need") and "rollout.episode.max_turns=10" in err
    # the checks the job makes at its start run too
    assert main(["train", "-c", "qwen3_4b", "--dry-run", "rollout.sampling.top_p=0.9"]) == 2
    assert "rollout.sampling.top_p=0.9 with a GRPO stage" in capsys.readouterr().err


def test_the_pure_placement_agrees_with_ray_on_fake_gpus():
    """A real Ray cluster of 2 nodes x 8 logical GPUs (and a CPU head): the 4B layout the plan places
    on 2 x 8 is placed by Ray the same way (8 GPUs a node), and the one it rejects Ray cannot place."""
    import ray

    from cluster.local import LocalCluster
    from cluster.resources import make_layout
    from core.raycluster import init_ray

    overrides = ["trainer.num_workers=15", "cluster.placement_timeout_s=20"]
    with LocalCluster(nodes=[{}, {}], cpus_per_node=16, gpus_per_node=8) as c:
        init_ray(c.address, logging_level="ERROR")
        try:
            cfg = load_config("qwen3_4b", overrides)
            plan = make_plan(cfg, QWEN3_4B, ClusterSpec(nodes=2, gpus=16))
            layout = make_layout(cfg.cluster, plan.counts)
            try:
                gpu_nodes = {n["NodeID"]: 0.0 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")}
                for group, pg in layout.groups.items():
                    table = ray.util.placement_group_table(pg)
                    for i, node in table["bundles_to_node_id"].items():
                        if table["bundles"][i].get("GPU"):   # CPU-only bundles (the judge) may use the head
                            gpu_nodes[node] += table["bundles"][i]["GPU"]
            finally:
                layout.remove()
            planned = sorted(sum(a[3] for a in plan.actors if a[2] == n) for n in (0, 1))
            assert sorted(gpu_nodes.values()) == planned == [8.0, 8.0]
            too_many = load_config("qwen3_4b", ["trainer.num_workers=16", "cluster.placement_timeout_s=5"])
            with pytest.raises(PlacementError):
                make_plan(too_many, QWEN3_4B, ClusterSpec(nodes=2, gpus=16))
            with pytest.raises(PlacementError):
                make_layout(too_many.cluster, {"rollout": 1, "trainer": 16, "judge": 1})
        finally:
            ray.shutdown()
