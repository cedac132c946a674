"""Resource layouts: where the vLLM engine, the rollout, judge and trainer actors run (starting or
joining Ray is core.raycluster.init_ray).

Two layouts, chosen by `cluster.layout`:

- colocated: one placement group whose bundle i hosts rollout worker i and its engine AND trainer
  worker i (and the judge), so they share a device. On GPU the engines sleep while the trainer runs
  (`cluster.sleep_engines`); on CPU they simply share the cores.
- disaggregated: one placement group per pool (rollout, judge, trainer), one bundle per actor,
  each bundle asking for that pool's `PoolConfig` resources. Custom resources in a pool's config
  (e.g. `{"rollout_node": 1}`) pin its bundles to the nodes started with that resource, which is
  how a multi-node cluster is split between pools.

Callers ask `Layout.options(actor, i)` for the `.options(...)` kwargs of actor i; `placement` is the
same decision as a pure function (which bundle, which resources), so it is tested without a GPU.
The `rollout.engine.num_engines` vLLM engines take rollout bundles 0..N-1 (`check_engines`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from core.errors import UserError

POOLS = ("rollout", "judge", "trainer")


class PlacementError(UserError, RuntimeError):
    """The cluster cannot host the requested layout; the message names the pool and what it asked for."""


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


def check_engines(num_engines: int, counts: Mapping[str, int]) -> None:
    """Engine i runs in rollout bundle i (`placement`): a layout holds at most one engine per rollout
    worker. Raises PlacementError naming both keys (pure: checked before Ray starts)."""
    workers = int(counts.get("rollout", 0))
    if num_engines > workers:
        raise PlacementError(
            f"rollout.engine.num_engines={num_engines} cannot be placed with rollout.num_workers={workers}: each "
            f"vLLM engine runs in a rollout worker's bundle (engine i in bundle i), so num_engines can be at most "
            f"rollout.num_workers; set rollout.num_workers={num_engines} or rollout.engine.num_engines={workers}")


# Actors placed by a layout -> the pool whose bundles they use. A rollout bundle holds two actors:
# the vLLM engine and the rollout worker that runs episodes against it.
ACTORS = {"engine": "rollout", "rollout": "rollout", "judge": "judge", "trainer": "trainer"}


def placement(cfg, counts: Mapping[str, int], actor: str, index: int = 0) -> dict[str, Any]:
    """Where actor `index` of a kind goes and what it takes from its bundle (pure: no Ray).

    `actor` is "engine" (the vLLM engine), "rollout" (a rollout worker), "judge" or "trainer".
    Returns {"group": placement group name, "bundle": index, "num_cpus", "num_gpus", "resources"}.
    A rollout bundle is split between its two actors: the engine takes the bundle's GPUs (its share
    of the device when colocated), the rollout worker, which runs episodes and holds only a
    tokenizer, takes the CPUs and custom resources. Judge and trainer actors take their pool's.
    """
    if actor not in ACTORS:
        raise ValueError(f"unknown actor {actor!r}; actors are {', '.join(ACTORS)}")
    pool = ACTORS[actor]
    n = int(counts.get(pool, 0))
    if not 0 <= index < n:
        raise ValueError(f"{actor} actor {index} is outside the layout ({n} {pool} bundles)")
    pc = getattr(cfg, pool)
    num_gpus = float(pc.num_gpus)
    if cfg.layout == "colocated" and num_gpus:
        # Pools sharing a device each take a fraction of it; the bundle holds the largest request.
        sharing = [p for p in POOLS if index < counts.get(p, 0) and getattr(cfg, p).num_gpus]
        num_gpus /= len(sharing)
    num_cpus = float(pc.num_cpus)
    resources = {k: float(v) for k, v in dict(pc.resources).items()} or None
    if actor == "engine":
        num_cpus, resources = 0.0, None
    elif actor == "rollout":
        num_gpus = 0.0
    return {"group": "shared" if cfg.layout == "colocated" else pool, "bundle": index,
            "num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources}


@dataclass
class Layout:
    """Placement groups made for a run; `options(actor, i)` places actor i (see `placement`)."""
    cfg: Any
    counts: dict[str, int]
    groups: dict[str, Any] = field(default_factory=dict)  # group name -> PlacementGroup

    def options(self, actor: str, index: int = 0) -> dict[str, Any]:
        """The `.options(...)` kwargs of actor `index`: its resources, in its bundle."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        p = placement(self.cfg, self.counts, actor, index)
        return {
            "num_cpus": p["num_cpus"],
            "num_gpus": p["num_gpus"],
            "resources": p["resources"],
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.groups[p["group"]], placement_group_bundle_index=p["bundle"]),
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
