"""Config of the cluster layout: Ray address, placement of rollout, judge and trainer pools."""
from __future__ import annotations

from dataclasses import dataclass, field

from core.fields import at_least, one_of


@dataclass
class PoolConfig:
    """Resources of ONE actor of a pool (one placement-group bundle each in the disaggregated layout)."""
    num_cpus: float = at_least(0.0, default=1.0)
    num_gpus: float = at_least(0.0, default=0.0)
    resources: dict[str, float] = field(default_factory=dict)  # custom Ray resources, e.g. {"rollout_node": 1}


@dataclass
class ClusterConfig:
    address: str = ""         # "" = start a local Ray; "auto" or "HOST:PORT" = join a running cluster
    layout: str = one_of("colocated", "disaggregated", default="colocated")
    num_cpus: int = at_least(0, default=0, help="CPUs of a local Ray (0 = all); ignored when joining a cluster")
    placement_timeout_s: float = at_least(1.0, default=120.0, help="wait this long for placement groups")
    sleep_engines: bool = True  # colocated on GPU: engines free device memory while the trainer runs
    rollout: PoolConfig = field(default_factory=PoolConfig)
    judge: PoolConfig = field(default_factory=PoolConfig)
    trainer: PoolConfig = field(default_factory=PoolConfig)
