"""A throw-away multi-node Ray cluster on this machine: a head and worker nodes as separate
`ray start` processes, each with its own custom resources, ports and (shared) temp dir.

Used by the tests and by anyone who wants to try a multi-node layout on one box:

    with LocalCluster(nodes=[{"rollout_node": 1}, {"trainer_node": 1}], dashboard=True) as c:
        init_ray(c.address); ...                  # core.raycluster; or JobSubmissionClient(c.dashboard_url)
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.net import free_port


def _ray_bin() -> str:
    here = Path(sys.executable).parent / "ray"
    return str(here) if here.exists() else (shutil.which("ray") or "ray")


WORKER_PORTS = 41   # ports per node for its worker processes (Ray's --min/--max-worker-port range)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    def __init__(self, nodes: list[dict[str, float]] = (), *, head_resources: dict[str, float] | None = None,
                 cpus_per_node: int = 1, gpus_per_node: int = 0, dashboard: bool = False,
                 start_timeout_s: float = 90.0, private_dirs: dict[int, str | os.PathLike] | None = None):
        """private_dirs: {i: DIR}: worker node i (of `nodes`) sees an empty directory of its own at DIR
        instead of this machine's, as a node without the shared filesystem would (a mount namespace
        with a tmpfs over DIR; needs root and `unshare`)."""
        self.nodes = list(nodes)
        self.private_dirs = dict(private_dirs or {})
        self.head_resources = head_resources or {"head_node": 1}
        self.cpus = cpus_per_node
        self.gpus = gpus_per_node   # on each worker node (not the head): logical, Ray needs no device for them
        self.dashboard = dashboard
        self.timeout = start_timeout_s
        # Short path: Ray's unix socket paths must stay under ~107 characters.
        self.temp_dir = tempfile.mkdtemp(prefix="tr", dir="/tmp")
        # Every port handed to any node of this cluster, worker ranges included: the OS may give
        # back a port that lies inside a range drawn earlier, and Ray refuses such overlaps.
        self._taken: set[int] = set()
        self.port = self._port()
        self.dashboard_port = self._port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        # Ray turns token auth on for a new head when ~/.ray/auth_token exists, but a node joining
        # with `ray start --address` does not, and a client decides when `ray` is first imported;
        # the mismatch gets nodes refused. This throw-away loopback cluster runs without auth.
        self.env = {"RAY_AUTH_MODE": "disabled"}
        self._env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self._env.update(self.env, RAY_USAGE_STATS_ENABLED="0")
        self._started = False

    def _port(self, span: int = 1) -> int:
        """The first of `span` consecutive ports that are free now and not yet given to this cluster."""
        for _ in range(1000):
            lo = free_port()
            block = set(range(lo, lo + span))
            if lo + span <= 65536 and not block & self._taken and all(map(_bindable, block)):
                self._taken |= block
                return lo
        raise RuntimeError(f"found no {span} free consecutive ports on 127.0.0.1 after 1000 tries")

    def _node_ports(self) -> list[str]:
        # Every node on one machine needs its own ports; worker port ranges must not overlap.
        lo = self._port(span=WORKER_PORTS)
        flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
        return [x for flag in flags for x in (flag, str(self._port()))] + [
            "--min-worker-port", str(lo), "--max-worker-port", str(lo + WORKER_PORTS - 1)]

    def _run(self, args: list[str], private_dir: str | os.PathLike | None = None) -> None:
        cmd = [_ray_bin(), *args]
        if private_dir is not None:   # the node's daemons inherit the namespace, and so its workers
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs terminus-private "$0" && exec "$@"', str(private_dir), *cmd]
        r = subprocess.run(cmd, env=self._env, capture_output=True, text=True, timeout=self.timeout)
        if r.returncode != 0:
            raise RuntimeError(f"`ray {' '.join(args)}` failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def start(self) -> "LocalCluster":
        self._started = True
        head = ["start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                "--num-cpus", str(self.cpus), "--num-gpus", "0", "--temp-dir", self.temp_dir,
                "--resources", json.dumps(self.head_resources), "--disable-usage-stats", *self._node_ports()]
        if self.dashboard:
            head += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(self.dashboard_port)]
        else:
            head += ["--include-dashboard", "false"]
        self._run(head)
        for i, res in enumerate(self.nodes):
            self._run(["start", "--address", self.address, "--node-ip-address", "127.0.0.1",
                       "--num-cpus", str(self.cpus), "--num-gpus", str(self.gpus), "--resources", json.dumps(res),
                       "--disable-usage-stats", *self._node_ports()], private_dir=self.private_dirs.get(i))
        self._wait_nodes(1 + len(self.nodes))
        return self

    def _wait_nodes(self, n: int) -> None:
        code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                "print(sum(1 for x in ray.nodes() if x['Alive']))")
        deadline = time.time() + self.timeout
        while True:
            r = subprocess.run([sys.executable, "-c", code, self.address], env=self._env,
                               capture_output=True, text=True, timeout=self.timeout)
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            if time.time() > deadline:
                raise RuntimeError(f"local Ray cluster did not reach {n} nodes: {r.stdout[-500:]} {r.stderr[-1000:]}")
            time.sleep(1.0)

    def stop(self) -> None:
        if not self._started:
            return
        # `ray stop` would kill every Ray on the machine (other people's too): stop only ours, by
        # the session dir of this temp dir -> the pids of our raylets / gcs.
        self._kill_own()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self._started = False

    def _kill_own(self) -> None:
        import psutil

        mine = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if self.temp_dir in cmd or f"127.0.0.1:{self.port}" in cmd:
                mine.append(p)
        # and their children: Ray's agents rename themselves (ray::DashboardAgent), so their command
        # lines no longer name the cluster; killed with their parents they would outlive them
        for p in list(mine):
            try:
                mine += [c for c in p.children(recursive=True) if c not in mine]
            except psutil.NoSuchProcess:
                pass
        for p in mine:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        gone, alive = psutil.wait_procs(mine, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
