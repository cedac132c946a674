"""The sandbox's config (the run config's `rollout.sandbox` section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List

from core.fields import at_least, items, one_of, positive


@dataclass
class SandboxConfig:
    backend: str = one_of("bwrap", "docker", "podman", "local", default="bwrap",
                          help="where model commands run; 'local' has no isolation")
    allow_local: bool = False  # 'local' refuses to start unless this is true
    command_timeout_s: float = positive(default=60.0, help="wall-clock limit per command")
    memory_limit_mb: int = at_least(16, default=2048)
    max_processes: int = at_least(8, default=256)
    cpu_time_limit_s: int = at_least(1, default=300)
    disk_limit_mb: int = at_least(0, default=2048,
                                  help="bwrap: writable space per sandbox (work dir changes + /tmp); 0 = unlimited")
    output_limit_bytes: int = at_least(256, default=16384,
                                       help="observation cap; head+tail kept, middle dropped")
    image: str = "terminus-base:latest"  # docker/podman: default image when a task names none
    workdir: str = "/work/repo"          # where the task repository appears inside the sandbox
    # bwrap: extra host paths visible read-only at the same place (e.g. a toolchain under $HOME)
    ro_binds: List[str] = items(list, help="bwrap: extra host paths bound read-only")
    use_cgroups: bool = True             # bwrap: memory/pids limits via cgroup v2 or v1 (else rlimits)
    root_dir: str = ""                   # host dir for sandbox dirs; "" = $TMPDIR/terminus-sandboxes
