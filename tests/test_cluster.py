"""Resource layouts on a real multi-node Ray cluster: a head and two worker nodes, each a separate
`ray start` process with its own custom resource; checks on which node each pool's actors land."""
import os

import pytest
import ray

from cluster.config import ClusterConfig, PoolConfig
from cluster.local import LocalCluster
from cluster.resources import PlacementError, bundles_for, make_layout, placement
from core.raycluster import init_ray
from terminus.config import ConfigError, load_config

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@ray.remote(num_cpus=0)
class Where:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def test_bundles_colocated_share_one_bundle_per_index():
    cfg = ClusterConfig(layout="colocated", rollout=PoolConfig(num_cpus=1, num_gpus=1),
                        trainer=PoolConfig(num_cpus=2, num_gpus=1), judge=PoolConfig(num_cpus=0.5))
    b = bundles_for(cfg, {"rollout": 2, "trainer": 2, "judge": 1})
    assert list(b) == ["shared"]
    assert b["shared"][0] == {"CPU": 3.5, "GPU": 1.0}   # rollout + trainer + judge share device 0
    assert b["shared"][1] == {"CPU": 3.0, "GPU": 1.0}


def test_bundles_disaggregated_one_group_per_pool():
    cfg = ClusterConfig(layout="disaggregated", rollout=PoolConfig(num_cpus=1, resources={"rollout_node": 0.5}),
                        trainer=PoolConfig(num_cpus=1, num_gpus=2))
    b = bundles_for(cfg, {"rollout": 2, "trainer": 1, "judge": 0})
    assert b == {"rollout": [{"CPU": 1.0, "rollout_node": 0.5}] * 2, "trainer": [{"CPU": 1.0, "GPU": 2.0}]}


def _taken(cfg, counts, bundle_group, index):
    """What the actors placed in one bundle ask for, summed (the bundle must hold it)."""
    total: dict[str, float] = {}
    for actor, pool in (("engine", "rollout"), ("rollout", "rollout"), ("judge", "judge"), ("trainer", "trainer")):
        if index < counts.get(pool, 0):
            p = placement(cfg, counts, actor, index)
            if p["group"] == bundle_group:
                for k, v in [("CPU", p["num_cpus"]), ("GPU", p["num_gpus"]), *(p["resources"] or {}).items()]:
                    total[k] = total.get(k, 0.0) + v
    return {k: v for k, v in total.items() if v}


def test_placement_gives_the_engine_the_gpu_and_the_rollout_worker_the_cpus():
    """The training job's placement on a GPU layout, decided without a GPU: the vLLM engine takes its
    rollout bundle's GPU share (colocated: half, next to the trainer), the rollout worker, which only
    holds a tokenizer, the CPUs and custom resources; the judge its own pool's resources."""
    cfg = ClusterConfig(layout="colocated", rollout=PoolConfig(num_cpus=1, num_gpus=1, resources={"rollout_node": 1}),
                        trainer=PoolConfig(num_cpus=2, num_gpus=1), judge=PoolConfig(num_cpus=0.5))
    counts = {"rollout": 2, "trainer": 2, "judge": 1}
    assert placement(cfg, counts, "engine", 0) == {"group": "shared", "bundle": 0, "num_cpus": 0.0, "num_gpus": 0.5,
                                                   "resources": None}
    assert placement(cfg, counts, "rollout", 1) == {"group": "shared", "bundle": 1, "num_cpus": 1.0, "num_gpus": 0.0,
                                                    "resources": {"rollout_node": 1.0}}
    assert placement(cfg, counts, "trainer", 0)["num_gpus"] == 0.5
    assert placement(cfg, counts, "judge", 0) == {"group": "shared", "bundle": 0, "num_cpus": 0.5, "num_gpus": 0.0,
                                                  "resources": None}
    for i, bundle in enumerate(bundles_for(cfg, counts)["shared"]):
        assert _taken(cfg, counts, "shared", i) == bundle   # every bundle holds exactly what its actors take

    dis = ClusterConfig(layout="disaggregated", rollout=PoolConfig(num_cpus=1, num_gpus=1),
                        trainer=PoolConfig(num_cpus=1, num_gpus=2), judge=PoolConfig(num_cpus=1, num_gpus=1))
    counts = {"rollout": 1, "trainer": 1, "judge": 2}
    assert placement(dis, counts, "engine", 0) == {"group": "rollout", "bundle": 0, "num_cpus": 0.0, "num_gpus": 1.0,
                                                   "resources": None}
    assert placement(dis, counts, "rollout", 0)["num_gpus"] == 0.0
    assert placement(dis, counts, "judge", 1) == {"group": "judge", "bundle": 1, "num_cpus": 1.0, "num_gpus": 1.0,
                                                  "resources": None}
    for group, bundles in bundles_for(dis, counts).items():
        for i, bundle in enumerate(bundles):
            assert _taken(dis, counts, group, i) == bundle
    with pytest.raises(ValueError, match="engine actor 1 is outside the layout"):
        placement(dis, counts, "engine", 1)
    with pytest.raises(ValueError, match="unknown actor"):
        placement(dis, counts, "teacher", 0)


def test_layout_is_validated_by_config():
    with pytest.raises(ConfigError, match="cluster.layout"):
        load_config("tiny_cpu", ["cluster.layout=spread"])


def test_local_cluster_ports_never_overlap_across_nodes():
    # A port drawn from the OS may fall inside a worker range drawn earlier; Ray then refuses to
    # start the node (seen in CI). Every port of every node must be distinct.
    c = LocalCluster(nodes=[{}, {}])
    used = [c.port, c.dashboard_port]
    for _ in range(3):
        args = c._node_ports()
        flags = dict(zip(args[::2], map(int, args[1::2])))
        lo, hi = flags.pop("--min-worker-port"), flags.pop("--max-worker-port")
        used += [*flags.values(), *range(lo, hi + 1)]
    os.rmdir(c.temp_dir)
    assert len(used) == len(set(used)) == 2 + 3 * (6 + 41)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes=[{"rollout_node": 1}, {"trainer_node": 1}], cpus_per_node=1) as c:
        init_ray(c.address, logging_level="ERROR")
        try:
            yield {n["Resources"].get("rollout_node") and "rollout" or n["Resources"].get("trainer_node") and "trainer"
                   or "head": n["NodeID"] for n in ray.nodes() if n["Alive"]}
        finally:
            ray.shutdown()


def test_disaggregated_pools_land_on_their_nodes(cluster):
    assert set(cluster) == {"head", "rollout", "trainer"}
    cfg = ClusterConfig(layout="disaggregated", placement_timeout_s=30,
                        rollout=PoolConfig(num_cpus=0.4, resources={"rollout_node": 0.4}),
                        trainer=PoolConfig(num_cpus=0.5, resources={"trainer_node": 0.5}),
                        judge=PoolConfig(num_cpus=0.5, resources={"head_node": 0.5}))
    layout = make_layout(cfg, {"rollout": 2, "trainer": 1, "judge": 1})
    try:
        actors = {(p, i): Where.options(**layout.options(p, i)).remote()
                  for p, n in layout.counts.items() for i in range(n)}
        nodes = {k: ray.get(a.node.remote(), timeout=60) for k, a in actors.items()}
        assert nodes[("rollout", 0)] == nodes[("rollout", 1)] == cluster["rollout"]
        assert nodes[("trainer", 0)] == cluster["trainer"]
        assert nodes[("judge", 0)] == cluster["head"]
        for a in actors.values():
            ray.kill(a)
    finally:
        layout.remove()


def test_colocated_pools_share_a_node(cluster):
    cfg = ClusterConfig(layout="colocated", placement_timeout_s=30,
                        rollout=PoolConfig(num_cpus=0.3, resources={"trainer_node": 0.1}),
                        trainer=PoolConfig(num_cpus=0.3), judge=PoolConfig(num_cpus=0.2))
    layout = make_layout(cfg, {"rollout": 1, "trainer": 1, "judge": 1})
    try:
        actors = [Where.options(**layout.options(p, 0)).remote() for p in ("rollout", "trainer", "judge")]
        nodes = {ray.get(a.node.remote(), timeout=60) for a in actors}
        assert nodes == {cluster["trainer"]}   # the bundle needs trainer_node, so all three sit there
        for a in actors:
            ray.kill(a)
    finally:
        layout.remove()


def test_unplaceable_layout_names_the_pool(cluster):
    cfg = ClusterConfig(layout="disaggregated", placement_timeout_s=2,
                        trainer=PoolConfig(num_cpus=1, resources={"gpu_node": 1}))
    with pytest.raises(PlacementError, match="'trainer'.*gpu_node"):
        make_layout(cfg, {"trainer": 1})


def test_cpus_needed_sums_every_bundle():
    from cluster.resources import cpus_needed

    cfg = load_config("tiny_cpu").cluster   # colocated: one bundle per actor, each pool's CPUs
    per = {p: getattr(cfg, p).num_cpus for p in ("rollout", "trainer", "judge")}
    assert cpus_needed(cfg, {"rollout": 1, "trainer": 1, "judge": 1}) == sum(per.values())
    assert cpus_needed(cfg, {"rollout": 1, "trainer": 2, "judge": 1}) == sum(per.values()) + per["trainer"]
