"""Host-side pieces of a sandbox: its private directory with a copy-on-write view of the task's
repository, and its cgroups.

The repository snapshot is a read-only template. Each sandbox gets `<dir>/repo`: a kernel overlayfs
mount (template as lowerdir, writes land in `<dir>/upper`) when we are root and the kernel allows
it, else a plain copy. Closing unmounts and deletes `<dir>` entirely.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import tempfile
import time
import uuid

_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUPS_FILE = "cgroups"  # in a sandbox's dir: where its cgroups are, for reap_stale


def default_root() -> str:
    return os.path.join(tempfile.gettempdir(), "terminus-sandboxes")


def _mount_overlay(lower: str, upper: str, work: str, target: str) -> bool:
    if os.geteuid() != 0 or any(c in lower for c in ",:\\"):  # overlay's option syntax can't quote these
        return False
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    rc = _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts)
    return rc == 0


class Workspace:
    """`<root>/<id>/` holding repo (the writable view), tmp, home and the overlay's upper/work."""

    def __init__(self, root: str | None, repo_dir: str | None):
        root = root or default_root()
        os.makedirs(root, exist_ok=True)
        if root not in _reaped_roots:  # once per process: sandboxes of crashed processes
            _reaped_roots.add(root)
            reap_stale(root)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # the pid lets reap_stale find orphans
        self.dir = os.path.join(root, self.id)
        self.repo = os.path.join(self.dir, "repo")
        self.tmp = os.path.join(self.dir, "tmp")
        self.mode = "empty"
        for d in (self.repo, self.tmp, os.path.join(self.tmp, "home")):
            os.makedirs(d)
        os.chmod(self.tmp, 0o1777)
        if repo_dir is None:
            return
        repo_dir = os.path.abspath(repo_dir)
        if not os.path.isdir(repo_dir):
            shutil.rmtree(self.dir, ignore_errors=True)
            raise FileNotFoundError(f"repository snapshot {repo_dir!r} is not a directory; "
                                    "pass the path of the task's repository (or None for an empty one)")
        upper, work = os.path.join(self.dir, "upper"), os.path.join(self.dir, "work")
        os.makedirs(upper)
        os.makedirs(work)
        if _mount_overlay(repo_dir, upper, work, self.repo):
            self.mode = "overlay"
        else:
            shutil.rmtree(self.repo)
            shutil.copytree(repo_dir, self.repo, symlinks=True)
            self.mode = "copy"

    def destroy(self) -> None:
        if self.mode == "overlay":
            _libc.umount2(self.repo.encode(), MNT_DETACH)
        shutil.rmtree(self.dir, ignore_errors=True)


_reaped_roots: set[str] = set()


def sigkill(pid: int) -> None:
    """SIGKILL, where a process that is already gone is not an error."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def reap_stale(root: str) -> list[str]:
    """Remove sandboxes whose creating process is gone (it was killed before close()): kill their
    processes, unmount, delete dirs and cgroups. Returns the ids removed."""
    removed = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        pid = name.split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        cg = Cgroups.existing(f"terminus-{name}", os.path.join(root, name, CGROUPS_FILE))
        cg.kill_all()
        cg.remove()
        repo = os.path.join(root, name, "repo")
        if os.path.ismount(repo):
            _libc.umount2(repo.encode(), MNT_DETACH)
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed.append(name)
    return removed


def _own_cgroup(controller: str) -> str:
    """This process's cgroup (v1) for `controller`, e.g. '/process_api/abc' or '/'."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if controller in ctrls.split(","):
                    return path
    except OSError:
        pass
    return "/"


class Cgroups:
    """v1 memory + pids cgroups for one sandbox, created under this process's own cgroups.

    `procs_files` are what a starting process writes its pid into to join. `available` is False
    where cgroup v1 is not mounted or not writable; the caller then falls back to rlimits.
    """

    CONTROLLERS = ("memory", "pids")

    def __init__(self, name: str, memory_limit_mb: int, max_processes: int):
        self.paths: dict[str, str] = {}
        try:
            for ctrl in self.CONTROLLERS:
                base = os.path.join(CGROUP_ROOT, ctrl)
                if not os.path.exists(os.path.join(base, "cgroup.procs")):
                    raise OSError(f"cgroup v1 controller {ctrl} is not mounted at {base}")
                path = os.path.join(base + _own_cgroup(ctrl), name)
                os.mkdir(path)
                self.paths[ctrl] = path
            mem = str(memory_limit_mb * 1024 * 1024)
            self._write("memory", "memory.limit_in_bytes", mem)
            # Without this a limited process swaps instead of being killed (where swap exists).
            if os.path.exists(os.path.join(self.paths["memory"], "memory.memsw.limit_in_bytes")):
                self._write("memory", "memory.memsw.limit_in_bytes", mem)
            self._write("pids", "pids.max", str(max_processes))
            self.available = True
        except OSError:
            self.remove()
            self.available = False

    @classmethod
    def existing(cls, name: str, record: str = "") -> "Cgroups":
        """Handle on cgroups created earlier (by a process that died), without creating any:
        the paths listed in `record` (see `save`), else `name` under our own cgroups."""
        self = cls.__new__(cls)
        self.paths = {}
        try:
            with open(record) as f:
                listed = dict(line.rstrip("\n").split(" ", 1) for line in f if " " in line)
        except OSError:
            listed = {}
        for ctrl in cls.CONTROLLERS:
            path = listed.get(ctrl) or os.path.join(CGROUP_ROOT, ctrl + _own_cgroup(ctrl), name)
            if os.path.basename(path) == name and os.path.isdir(path):
                self.paths[ctrl] = path
        self.available = bool(self.paths)
        return self

    def save(self, record: str) -> None:
        """Write our paths to `record` (in the sandbox dir) so `reap_stale` can find them."""
        with open(record, "w") as f:
            f.writelines(f"{ctrl} {path}\n" for ctrl, path in self.paths.items())

    def _write(self, ctrl: str, file: str, value: str) -> None:
        with open(os.path.join(self.paths[ctrl], file), "w") as f:
            f.write(value)

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(p, "cgroup.procs") for p in self.paths.values()]

    def pids(self) -> list[int]:
        if "pids" not in self.paths:
            return []
        try:
            with open(os.path.join(self.paths["pids"], "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def refused_forks(self) -> int:
        """How many forks pids.max has refused so far (pids.events: `max N`)."""
        try:
            with open(os.path.join(self.paths["pids"], "pids.events")) as f:
                return int(f.read().split()[1])
        except (OSError, KeyError, IndexError, ValueError):
            return 0

    def oom_killed(self) -> bool:
        try:
            with open(os.path.join(self.paths["memory"], "memory.oom_control")) as f:
                return any(l.startswith("oom_kill ") and l.split()[1] != "0" for l in f)
        except (OSError, KeyError):
            return False

    def kill_all(self, deadline_s: float = 5.0) -> bool:
        """SIGKILL every member until none is left (v1 has no cgroup.kill, so loop: a fork bomb
        may create new members while we iterate). True when the cgroup is empty."""
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
