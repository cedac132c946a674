"""Config of the cluster layout: Ray address, placement of rollout, judge and trainer pools."""
from __future__ import annotations

from dataclasses import dataclass, field

from terminus.fields import at_least, one_of


@dataclass
class PoolConfig:
    num_cpus: float = at_least(0.0, default=1.0)
    num_gpus: float = at_least(0.0, default=0.0)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources


@dataclass
class ClusterConfig:
    address: str = ""         # "" = start a local Ray; "auto" = join the running cluster
    layout: str = one_of("colocated", "disaggregated", default="colocated")
    rollout: PoolConfig = field(default_factory=PoolConfig)
    judge: PoolConfig = field(default_factory=PoolConfig)
    trainer: PoolConfig = field(default_factory=PoolConfig)
