"""Ray start-up and resource layouts: where the rollout, judge and trainer actors run.

Two layouts, chosen by `cluster.layout`:

- colocated: one placement group whose bundle i hosts rollout actor i AND trainer worker i
  (and the judge), so they share a device. On GPU the engines sleep while the trainer runs
  (`cluster.sleep_engines`); on CPU they simply share the cores.
- disaggregated: one placement group per pool (rollout, judge, trainer), one bundle per actor,
  each bundle asking for that pool's `PoolConfig` resources. Custom resources in a pool's config
  (e.g. `{"rollout_node": 1}`) pin its bundles to the nodes started with that resource, which is
  how a multi-node cluster is split between pools.

Callers ask `Layout.options(pool, i)` for the `.options(...)` kwargs of actor i of a pool.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from core.errors import UserError

POOLS = ("rollout", "judge", "trainer")


class PlacementError(UserError, RuntimeError):
    """The cluster cannot host the requested layout; the message names the pool and what it asked for."""


class ClusterUnreachable(UserError, ConnectionError):
    """cluster.address names a Ray cluster that does not answer."""


def init_ray(cfg, *, runtime_env: dict | None = None, min_cpus: float = 0, **kwargs) -> None:
    """Start a local Ray (cluster.address == "") or join the cluster at cluster.address. Idempotent.

    A local Ray gets cluster.num_cpus logical CPUs, or (0) the machine's count raised to `min_cpus`
    so the configured layout always fits on one small machine (Ray CPUs are only bookkeeping).
    """
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {k: v for k, v in os.environ.items()
                        if k.startswith(("VLLM_", "WANDB_", "TERMINUS_", "TOKENIZERS_"))}}
    if runtime_env:
        env.update(runtime_env)
    if not cfg.address:
        num_cpus = cfg.num_cpus or max(os.cpu_count() or 1, math.ceil(min_cpus))
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 runtime_env=env, log_to_driver=True, **kwargs)
    else:
        try:
            ray.init(address=cfg.address, runtime_env=env, **kwargs)
        except ConnectionError as e:
            raise ClusterUnreachable(f"cannot reach the Ray cluster at cluster.address={cfg.address} ({e}); "
                                     "start it (`ray start --head` on the head node) or fix the address "
                                     "(empty = a local Ray)") from None


def _bundle(pool) -> dict[str, float]:
    b = {"CPU": float(pool.num_cpus)}
    if pool.num_gpus:
        b["GPU"] = float(pool.num_gpus)
    b.update({k: float(v) for k, v in dict(pool.resources).items()})
    return {k: v for k, v in b.items() if v > 0}


def bundles_for(cfg, counts: Mapping[str, int]) -> dict[str, list[dict[str, float]]]:
    """The placement-group bundles of each group (pure: for tests and error messages).

    Returns {group name: [bundle, ...]}. colocated -> one group "shared" with max(counts) bundles,
    each the sum of the pools' CPUs and the largest GPU / custom request; disaggregated -> one
    group per pool with counts[pool] bundles of that pool's resources.
    """
    pools = {p: getattr(cfg, p) for p in POOLS if counts.get(p, 0) > 0}
    if cfg.layout == "disaggregated":
        return {p: [_bundle(pc) for _ in range(counts[p])] for p, pc in pools.items()}
    n = max(counts.get(p, 0) for p in POOLS)
    shared: list[dict[str, float]] = []
    for i in range(n):
        here = [_bundle(pc) for p, pc in pools.items() if i < counts[p]]
        b: dict[str, float] = {}
        for one in here:
            for k, v in one.items():
                b[k] = b.get(k, 0.0) + v if k == "CPU" else max(b.get(k, 0.0), v)
        shared.append(b)
    return {"shared": shared}


def cpus_needed(cfg, counts: Mapping[str, int]) -> float:
    """Logical CPUs the layout's placement groups reserve in total."""
    return sum(b.get("CPU", 0.0) for bundles in bundles_for(cfg, counts).values() for b in bundles)


@dataclass
class Layout:
    """Placement groups made for a run; `options(pool, i)` places actor i of a pool."""
    cfg: Any
    counts: dict[str, int]
    groups: dict[str, Any] = field(default_factory=dict)  # group name -> PlacementGroup

    def options(self, pool: str, index: int = 0) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; pools are {', '.join(POOLS)}")
        if not 0 <= index < self.counts.get(pool, 0):
            raise ValueError(f"{pool} actor {index} is outside the layout ({self.counts.get(pool, 0)} {pool} actors)")
        pc = getattr(self.cfg, pool)
        group = "shared" if self.cfg.layout == "colocated" else pool
        num_gpus = float(pc.num_gpus)
        if self.cfg.layout == "colocated" and num_gpus:
            # Pools sharing a device each take a fraction of it; the bundle holds the largest request.
            sharing = [p for p in POOLS if index < self.counts.get(p, 0) and getattr(self.cfg, p).num_gpus]
            num_gpus /= len(sharing)
        return {
            "num_cpus": float(pc.num_cpus),
            "num_gpus": num_gpus,
            "resources": {k: float(v) for k, v in dict(pc.resources).items()} or None,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.groups[group], placement_group_bundle_index=index),
        }

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups.values():
            remove_placement_group(pg)
        self.groups.clear()


def make_layout(cfg, counts: Mapping[str, int]) -> Layout:
    """Reserve the placement groups for `counts` actors per pool; raise PlacementError if they cannot fit.

    cfg is a ClusterConfig. Colocated bundles are packed (STRICT_PACK on one node when a bundle
    shares a device); disaggregated bundles spread over the nodes that have the pool's resources.
    """
    import ray
    from ray.util.placement_group import placement_group

    layout = Layout(cfg=cfg, counts={p: int(counts.get(p, 0)) for p in POOLS})
    for name, bundles in bundles_for(cfg, layout.counts).items():
        if not bundles:
            continue
        strategy = "PACK" if cfg.layout == "colocated" else "SPREAD"
        pg = placement_group(bundles, strategy=strategy, name=f"terminus-{name}-{os.getpid()}")
        ready, _ = ray.wait([pg.ready()], timeout=cfg.placement_timeout_s)
        if not ready:
            have = ray.cluster_resources()
            layout.groups[name] = pg
            layout.remove()
            raise PlacementError(
                f"placement group '{name}' ({cfg.layout} layout) asked for bundles {bundles} but the cluster "
                f"could not place them within {cfg.placement_timeout_s:.0f}s; the cluster has {have}. "
                f"Lower cluster.{name if name != 'shared' else '<pool>'}.num_cpus/num_gpus, fix the custom "
                f"resources, or add nodes.")
        layout.groups[name] = pg
    return layout
