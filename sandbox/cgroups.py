"""Per-sandbox cgroups (memory + process count) on cgroup v2 or v1, and which of them a host allows.

`choose_cgroups(root, self_cgroup)` is the one place that decides: cgroup v2 (the unified
hierarchy) when it is mounted with the memory and pids controllers and writable, else v1 as
before, else none (with the reason, for the caller's warning). It only reads the tree under
`root`, so tests run it against fake trees.

v2 places a sandbox's cgroup beside this process's own cgroup (under its parent), not inside it:
v2 forbids enabling controllers for the children of a cgroup that holds processes (the "no
internal processes" rule), and ours holds at least us. Where our cgroup is the hierarchy's root
(a container with its own cgroup namespace), the sandboxes go under it, which works only once
the container's processes sit in a child cgroup (as docker-in-docker's entrypoint arranges).
v1 keeps placing them inside our own cgroups.
"""
from __future__ import annotations

import functools
import os
import posixpath
import signal
import time
from dataclasses import dataclass, field

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("memory", "pids")
V2_NEEDED = {"memory", "pids"}
UNIFIED = "unified"  # key of a v2 cgroup in `Cgroups.paths` and in the record file


def sigkill(pid: int) -> None:
    """SIGKILL, where a process that is already gone is not an error."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass(frozen=True)
class CgroupChoice:
    version: str                                          # "v2", "v1" or "none"
    parents: dict[str, str] = field(default_factory=dict)  # v2: {"unified": dir}; v1: {ctrl: dir}
    why_not: str = ""                                     # "none": why neither version is usable


def own_cgroups(self_cgroup: str) -> dict[str, str]:
    """Parse /proc/self/cgroup: {v1 controller: path} plus {"unified": path} for the v2 line."""
    own = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, ctrls, path = parts
        if hier == "0" and ctrls == "":
            own[UNIFIED] = path
        for ctrl in ctrls.split(","):
            if ctrl:
                own[ctrl] = path
    return own


def _writable(path: str) -> bool:
    """Writable by us: not on a read-only mount (containers mount cgroupfs so) and permitted."""
    try:
        return not os.statvfs(path).f_flag & os.ST_RDONLY and os.access(path, os.W_OK)
    except OSError:
        return False


def _read_words(path: str) -> set[str]:
    try:
        with open(path) as f:
            return set(f.read().split())
    except OSError:
        return set()


def _v2_parent(root: str, own: dict[str, str]) -> tuple[str, str]:
    """(dir where sandbox cgroups go, "") when v2 is usable, else ("", why not)."""
    mount = next((m for m in (root, os.path.join(root, "unified"))
                  if os.path.exists(os.path.join(m, "cgroup.controllers"))), "")
    if not mount:
        return "", f"no cgroup v2 hierarchy at {root}"
    own_path = own.get(UNIFIED, "/").rstrip("/")
    parent_rel = posixpath.dirname(own_path) if own_path else "/"  # the root has no parent: itself
    parent = os.path.join(mount, parent_rel.lstrip("/"))
    missing = V2_NEEDED - _read_words(os.path.join(parent, "cgroup.controllers"))
    if missing:
        return "", f"cgroup v2 at {parent} lacks the {', '.join(sorted(missing))} controller(s)"
    if not (_writable(parent) and _writable(os.path.join(parent, "cgroup.subtree_control"))):
        return "", f"cgroup v2 at {parent} is not writable"
    return parent, ""


def _v1_parents(root: str, own: dict[str, str]) -> tuple[dict[str, str], str]:
    parents = {}
    for ctrl in V1_CONTROLLERS:
        base = os.path.join(root, ctrl)
        if not os.path.exists(os.path.join(base, "cgroup.procs")):
            return {}, f"cgroup v1 {ctrl} controller not mounted at {base}"
        path = os.path.join(base, own.get(ctrl, "/").lstrip("/"))
        if not _writable(path):
            return {}, f"cgroup v1 {ctrl} cgroup {path} is not writable"
        parents[ctrl] = path.rstrip("/")
    return parents, ""


def choose_cgroups(root: str, self_cgroup: str) -> CgroupChoice:
    """Which cgroups can limit sandboxes: v2 if usable, else v1, else none (see module docstring).
    `root` is where cgroupfs is mounted, `self_cgroup` the text of /proc/self/cgroup."""
    own = own_cgroups(self_cgroup)
    parent, why_v2 = _v2_parent(root, own)
    if parent:
        return CgroupChoice("v2", {UNIFIED: parent.rstrip("/") or "/"})
    parents, why_v1 = _v1_parents(root, own)
    if parents:
        return CgroupChoice("v1", parents)
    return CgroupChoice("none", why_not=f"{why_v2}; {why_v1}")


@functools.lru_cache(maxsize=1)
def host_cgroups() -> CgroupChoice:
    """This host's choice, computed once per process."""
    try:
        with open("/proc/self/cgroup") as f:
            self_cgroup = f.read()
    except OSError:
        self_cgroup = ""
    return choose_cgroups(CGROUP_ROOT, self_cgroup)


class Cgroups:
    """Memory + pids cgroups of one sandbox (one v2 cgroup, or one per v1 controller).

    `procs_files` are what a starting process writes its pid into to join. `available` is False
    where no cgroups could be created; `why_not` then says why, and the caller falls back to
    rlimits.
    """

    CONTROLLERS = V1_CONTROLLERS

    def __init__(self, name: str, memory_limit_mb: int, max_processes: int,
                 choice: CgroupChoice | None = None):
        choice = choice or host_cgroups()
        self.paths: dict[str, str] = {}
        self.why_not = choice.why_not
        self.available = False
        if choice.version == "none":
            return
        try:
            if choice.version == "v2":
                self._create_v2(choice.parents[UNIFIED], name, memory_limit_mb, max_processes)
            else:
                self._create_v1(choice.parents, name, memory_limit_mb, max_processes)
            self.available = True
        except OSError as e:
            self.remove()
            self.why_not = f"creating the sandbox's cgroup ({choice.version}) failed: {e}"

    def _create_v1(self, parents: dict[str, str], name: str, memory_mb: int, max_processes: int) -> None:
        for ctrl in self.CONTROLLERS:
            path = os.path.join(parents[ctrl], name)
            os.mkdir(path)
            self.paths[ctrl] = path
        mem = str(memory_mb * 1024 * 1024)
        self._write("memory", "memory.limit_in_bytes", mem)
        # Without this a limited process swaps instead of being killed (where swap exists).
        if os.path.exists(self._file("memory", "memory.memsw.limit_in_bytes")):
            self._write("memory", "memory.memsw.limit_in_bytes", mem)
        self._write("pids", "pids.max", str(max_processes))

    def _create_v2(self, parent: str, name: str, memory_mb: int, max_processes: int) -> None:
        control = os.path.join(parent, "cgroup.subtree_control")
        if not V2_NEEDED <= _read_words(control):
            try:
                with open(control, "w") as f:
                    f.write(" ".join(f"+{c}" for c in sorted(V2_NEEDED)))
            except OSError as e:
                raise OSError(e.errno, f"cannot enable memory and pids in {control} ({e.strerror}); "
                                       "if that cgroup holds processes, move them into a child cgroup") from e
        path = os.path.join(parent, name)
        os.mkdir(path)
        self.paths[UNIFIED] = path
        self._write("memory", "memory.max", str(memory_mb * 1024 * 1024))
        if os.path.exists(self._file("memory", "memory.swap.max")):
            self._write("memory", "memory.swap.max", "0")  # killed at the limit, not swapped
        self._write("pids", "pids.max", str(max_processes))

    @classmethod
    def existing(cls, name: str, record: str = "") -> "Cgroups":
        """Handle on cgroups created earlier (by a process that died), without creating any:
        the paths listed in `record` (see `save`), else `name` under our own v1 cgroups."""
        self = cls.__new__(cls)
        self.paths, self.why_not = {}, ""
        try:
            with open(record) as f:
                listed = dict(line.rstrip("\n").split(" ", 1) for line in f if " " in line)
        except OSError:
            listed = {}
        if not listed:
            choice = host_cgroups()
            listed = {ctrl: os.path.join(p, name) for ctrl, p in choice.parents.items()}
        for key, path in listed.items():
            if key in (UNIFIED, *cls.CONTROLLERS) and os.path.basename(path) == name and os.path.isdir(path):
                self.paths[key] = path
        self.available = bool(self.paths)
        return self

    def save(self, record: str) -> None:
        """Write our paths to `record` (in the sandbox dir) so `reap_stale` can find them."""
        with open(record, "w") as f:
            f.writelines(f"{ctrl} {path}\n" for ctrl, path in self.paths.items())

    @property
    def version(self) -> str:
        return "v2" if UNIFIED in self.paths else "v1"

    def _file(self, ctrl: str, file: str) -> str:
        """A control file: v2 keeps every controller's files in the one cgroup dir."""
        return os.path.join(self.paths[UNIFIED] if UNIFIED in self.paths else self.paths[ctrl], file)

    def _write(self, ctrl: str, file: str, value: str) -> None:
        with open(self._file(ctrl, file), "w") as f:
            f.write(value)

    def _keyed(self, ctrl: str, file: str, key: str) -> int:
        """The number after `key` in a flat-keyed file (pids.events, memory.events...), 0 if absent."""
        try:
            with open(self._file(ctrl, file)) as f:
                for line in f:
                    k, _, v = line.partition(" ")
                    if k == key:
                        return int(v)
        except (OSError, KeyError, ValueError):
            pass
        return 0

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(p, "cgroup.procs") for p in self.paths.values()]

    def pids(self) -> list[int]:
        try:
            with open(self._file("pids", "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except (OSError, KeyError):
            return []

    def refused_forks(self) -> int:
        """How many forks pids.max has refused so far (pids.events: `max N`)."""
        return self._keyed("pids", "pids.events", "max")

    def oom_killed(self) -> bool:
        file = "memory.events" if self.version == "v2" else "memory.oom_control"
        return self._keyed("memory", file, "oom_kill") > 0

    def kill_all(self, deadline_s: float = 5.0) -> bool:
        """SIGKILL every member until none is left (v2 has cgroup.kill; v1 needs a loop, as a fork
        bomb may create new members while we iterate). True when the cgroup is empty."""
        if UNIFIED in self.paths and os.path.exists(self._file("pids", "cgroup.kill")):
            try:
                self._write("pids", "cgroup.kill", "1")
            except OSError:
                pass
        end = time.monotonic() + deadline_s
        while True:
            pids = self.pids()
            if not pids:
                return True
            if time.monotonic() > end:
                return False
            for pid in pids:
                sigkill(pid)
            time.sleep(0.002)

    def remove(self) -> None:
        for ctrl, path in list(self.paths.items()):
            for _ in range(100):  # rmdir fails with EBUSY until the last member is reaped
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            self.paths.pop(ctrl, None)
