"""The run directory on a multi-node cluster: one directory, at one absolute path, seen by every node.

Trainer ranks write their checkpoint shards into it and the engines reload the synced weights from
it (docs/cluster.md, "Storage"), so a node with its own local copy of the path would train on, or
lose, data silently. `check_shared_run_dir` proves the sharing at job start: the driver writes a
probe file, one Ray task per node reads it and writes a reply, the driver reads every reply. A node
that cannot see the driver's file, or whose reply the driver cannot see, stops the job with an error
naming it.
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Optional

from core.errors import ConfigError, UserError

PROBE_DIR = ".shared_probe"


class RunDirNotShared(UserError, RuntimeError):
    """A node of the cluster does not see the run directory the driver writes."""


def require_absolute(output_dir: str, why: str) -> None:
    """A relative output_dir resolves against each process's working directory (a Ray job's is a per-node
    copy of the upload): refuse it where more than one node must find the run directory."""
    if not Path(output_dir).is_absolute():
        raise ConfigError(f"output_dir={output_dir} is relative, and {why}: every node must find the run "
                          f"directory at one absolute path on a filesystem they all mount; set "
                          f"output_dir=/shared/path/NAME")


def node_reply(run_dir: str, token: str, node: str) -> Optional[str]:
    """On a node: read the driver's probe file and write this node's reply beside it. Returns None, or
    what went wrong on this node."""
    probe = Path(run_dir) / PROBE_DIR / token
    try:
        if probe.read_text() != token:
            return f"{probe} holds something else than the driver wrote"
        (probe.parent / f"{token}.{node}").write_text(node)
    except OSError as e:
        return f"cannot read the driver's probe file {probe} or write beside it ({e.strerror or e})"
    return None


def _probe_task(run_dir: str, token: str, node: str) -> tuple[str, Optional[str]]:
    return socket.gethostname(), node_reply(run_dir, token, node)


def unshared_nodes(run_dir: Path, token: str, replies: dict[str, tuple[str, Optional[str]]]) -> list[str]:
    """The driver's verdict on every node's reply: one line per node that does not share the run dir."""
    bad = []
    for node, (host, error) in sorted(replies.items()):
        if error is None and not (run_dir / PROBE_DIR / f"{token}.{node}").is_file():
            error = "its reply file did not reach the driver's run directory"
        if error is not None:
            bad.append(f"node {node[:12]} ({host}): {error}")
    return bad


def check_shared_run_dir(run_dir: str | os.PathLike, timeout_s: float = 120.0) -> int:
    """Every alive node of the connected Ray cluster writes and reads a probe file in `run_dir` (one task
    per node, pinned to it). Raises RunDirNotShared naming the nodes that do not share it; returns the
    number of nodes checked. With one node there is nothing to share: no task runs."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return len(nodes)
    run = Path(run_dir)
    require_absolute(str(run_dir), f"the cluster has {len(nodes)} nodes")
    token = secrets.token_hex(8)
    probes = run / PROBE_DIR
    probes.mkdir(parents=True, exist_ok=True)
    (probes / token).write_text(token)
    task = ray.remote(num_cpus=0, max_retries=0)(_probe_task)
    try:
        refs = {n: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(
            str(run), token, n) for n in nodes}
        replies = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
        bad = unshared_nodes(run, token, replies)
    finally:
        shutil.rmtree(probes, ignore_errors=True)
    if bad:
        raise RunDirNotShared(f"the run directory {run} is not shared by every node of the cluster ("
                              + "; ".join(bad) + "): put output_dir on a filesystem every node mounts at the "
                              "same path (NFS, a cluster filesystem); see docs/cluster.md, Storage")
    return len(nodes)
