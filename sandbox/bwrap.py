"""The default backend: bubblewrap namespaces + overlayfs + cgroup v1, one sandbox per episode.

Inside: the host's /usr, /etc (and the /bin, /lib... links) read-only, plus any `cfg.ro_binds`;
the task's repository as a private copy-on-write view at `cfg.workdir`; a private /tmp (a host
directory of this sandbox, so it survives a shell restart); fresh /proc and /dev; no network, IPC,
UTS or PID sharing with the host. Nothing else of the host is visible (not $HOME, not /work).

As root, bwrap would put us in a user namespace where files owned by other uids (sdists unpack as
uid 1001) are unreadable, so we skip the user namespace and instead drop every capability except
DAC_OVERRIDE, FOWNER and CHOWN (enough to edit such files; bwrap sets no_new_privs, so nothing can
regain more). The system binds are read-only mounts, which those capabilities cannot write through.

Limits: memory and process count through a per-sandbox cgroup, v2 or v1 (see cgroups.py; the OOM
killer's victim exits 137); CPU time through RLIMIT_CPU, per process; writable space through a
size-limited filesystem (see workspace.py), reported as `[sandbox: disk limit reached]`. Without
usable cgroups (a warning says which limits are then not enforced) memory falls back to RLIMIT_AS
and the process limit to RLIMIT_NPROC when not root. RLIMIT_NPROC never binds root (the kernel
exempts uid 0 whatever its capabilities), so as root the sandbox runs inside one more PID
namespace whose pid_max (settable per namespace since Linux 6.14) bounds how many pids its
processes can hold: between max_processes and max_processes + 299, as the kernel's pid
allocation reserves pids below 300 after the first wrap (pid_max cannot go below 301).

bwrap's namespace init (/proc/1/environ inside) has the sandbox's base environment (PATH, HOME,
LANG...), not the host's: the launcher starts with it and removes its own variables (and PWD).

Timeout and close kill every process: SIGKILL to the namespace's init (bwrap's child) collapses the
PID namespace (the kernel kills every member), then a loop over the cgroup's members catches
anything else. Killing only the outer bwrap is not enough: --die-with-parent arms the init's
parent-death signal after the init has forked the shell, so a sandbox closed within milliseconds of
starting could leave init and shell running, holding our pipes (about 1 close in 500 on 2 cores).
"""
from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess

from sandbox.config import SandboxConfig
from sandbox.base import split_bind
from sandbox.cgroups import Cgroups, sigkill
from sandbox.shell import SandboxError, ShellSandbox, wait_for_exit
from sandbox.workspace import CGROUPS_FILE, Workspace, warn_once

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_KEPT_CAPS = ("CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_CHOWN")
_BASE_ENV = {"PATH": _PATH, "HOME": "/tmp/home", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
             "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat", "USER": "root"}

# Joins the cgroups and sets rlimits, then becomes bwrap (dash: ~1 ms). Args: procs files, --, argv.
# Its variables (and the PWD that sh exports) are removed: bwrap's init keeps the env it gets.
_LAUNCHER = ('while [ "$1" != -- ]; do echo $$ >"$1" || exit 125; shift; done; shift; '
             'ulimit -t "$TERMINUS_CPU_S" || exit 125; '
             '[ -n "$TERMINUS_AS_KB" ] && { ulimit -v "$TERMINUS_AS_KB" || exit 125; }; '
             '[ -n "$TERMINUS_NPROC" ] && { ulimit -p "$TERMINUS_NPROC" || exit 125; }; '
             '[ -n "$TERMINUS_FSIZE" ] && { ulimit -f "$TERMINUS_FSIZE" || exit 125; }; '
             'unset TERMINUS_CPU_S TERMINUS_AS_KB TERMINUS_NPROC TERMINUS_FSIZE PWD; '
             'exec "$@"')
# PID 1 of the extra PID namespace (root without cgroups): sets its pid_max, then becomes bwrap.
_PIDNS = 'echo "$1" >/proc/sys/kernel/pid_max || exit 125; shift; unset PWD; exec "$@"'
PID_RESERVED = 300  # the kernel's RESERVED_PIDS: pids below it are not reused after a wrap


@functools.lru_cache(maxsize=1)
def pidns_limit_supported() -> bool:
    """Whether pid_max can be set per PID namespace (Linux >= 6.14, as root). Older kernels have
    one host-wide pid_max, which a write from a child namespace would change: never try there."""
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    unshare = shutil.which("unshare", path=_PATH)
    if os.geteuid() != 0 or not m or (int(m[1]), int(m[2])) < (6, 14) or unshare is None:
        return False
    with open("/proc/sys/kernel/pid_max") as f:
        host_before = f.read()
    r = subprocess.run([unshare, "--pid", "--fork", "--kill-child", "/bin/sh", "-c",
                        f"echo {PID_RESERVED + 100} >/proc/sys/kernel/pid_max"], capture_output=True)
    with open("/proc/sys/kernel/pid_max") as f:
        if f.read() != host_before:  # not namespaced after all: put the host's value back
            with open("/proc/sys/kernel/pid_max", "w") as w:
                w.write(host_before)
            return False
    return r.returncode == 0


def child_pids(pid: int) -> list[int]:
    """The direct children of a live process (stable while it lives: it has not reaped them)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:  # needs CONFIG_PROC_CHILDREN
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])  # comm may hold spaces and ')'
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def bwrap_binary() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError("bwrap not found: install Debian's `bubblewrap` package "
                           "(scripts/install.sh does), or set rollout.sandbox.backend=docker")
    return path


def system_binds() -> list[str]:
    """bwrap arguments exposing the host's system read-only (merged-/usr aware)."""
    args = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    return args


def extra_binds(extra_ro: list[str], workdir: str) -> list[str]:
    """Read-only binds ("HOST" or "HOST:DEST"); they come after /tmp's and the repository's binds,
    or a path under /tmp (or a tree bound into the repository) would be hidden by them."""
    args = []
    for bind in extra_ro:
        host, dest = split_bind(bind, workdir)
        if not os.path.isabs(host) or not os.path.exists(host):
            raise SandboxError(f"read-only bind {bind!r} (rollout.sandbox.ro_binds or the task's environment) names "
                               f"{host!r}, which is not an existing absolute path on this host; fix or remove it, "
                               "or rebuild the task corpus on this machine")
        args += ["--ro-bind", host, dest]
    return args


class BwrapSandbox(ShellSandbox):
    state_path = "/tmp/.terminus-shell-state"

    def __init__(self, cfg: SandboxConfig, repo_dir: str | None, env: dict | None = None,
                 ro_binds: list[str] = ()):
        super().__init__(cfg.output_limit_bytes, cfg.command_timeout_s)
        self.cfg = cfg
        self.ro_binds = [*cfg.ro_binds, *ro_binds]
        self._bwrap = bwrap_binary()
        self.workspace = Workspace(cfg.root_dir or None, repo_dir, cfg.disk_limit_mb)
        self._refused_seen = 0
        self.cgroups = None
        try:
            self.cgroups = (Cgroups(f"terminus-{self.workspace.id}", cfg.memory_limit_mb, cfg.max_processes)
                            if cfg.use_cgroups else None)
            if self.limits_via_cgroups:
                self.cgroups.save(os.path.join(self.workspace.dir, CGROUPS_FILE))
            else:
                self._warn_no_cgroups()
            self._env = {**_BASE_ENV, **{str(k): str(v) for k, v in (env or {}).items()}}
            self._base_args = self._bwrap_args()
        except BaseException:
            self.workspace.destroy()
            if self.cgroups:
                self.cgroups.remove()
            raise

    @property
    def limits_via_cgroups(self) -> bool:
        return bool(self.cgroups and self.cgroups.available)

    @property
    def pid_namespace_limit(self) -> int:
        """pid_max of the extra PID namespace (root without cgroups), else 0."""
        if self.limits_via_cgroups or os.geteuid() != 0 or not pidns_limit_supported():
            return 0
        return PID_RESERVED + self.cfg.max_processes

    def _warn_no_cgroups(self) -> None:
        why = self.cgroups.why_not if self.cgroups else "rollout.sandbox.use_cgroups=false"
        if os.geteuid() != 0:
            procs = "processes only per uid host-wide (RLIMIT_NPROC)"
        elif self.pid_namespace_limit:
            procs = f"processes only through a PID namespace's pid_max (up to {self.pid_namespace_limit - 1})"
        else:
            procs = "NO process limit (RLIMIT_NPROC does not bind root; pid_max per PID namespace needs Linux >= 6.14)"
        warn_once(why, f"limits without cgroups: memory only per process (RLIMIT_AS), {procs}; "
                       "not enforced: a sandbox-wide memory limit and OOM detection")

    def _bwrap_args(self) -> list[str]:
        cfg = self.cfg
        args = [self._bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
        if os.geteuid() == 0:
            args += ["--cap-drop", "ALL"]
            for cap in _KEPT_CAPS:
                args += ["--cap-add", cap]
        else:
            args += ["--unshare-user"]
        args += system_binds()
        # /dev is remounted read-only (rm -rf / would delete /dev/null) but keeps a writable shm;
        # the root tmpfs too (it holds the /lib64 -> usr/lib64 link every binary needs).
        args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--tmpfs", "/dev/shm",
                 "--bind", self.workspace.tmp, "/tmp", "--bind", self.workspace.repo, cfg.workdir,
                 *extra_binds(self.ro_binds, cfg.workdir), "--remount-ro", "/", "--chdir", cfg.workdir, "--clearenv"]
        for k, v in self._env.items():
            args += ["--setenv", k, v]
        return args

    async def _spawn(self, argv_tail: list[str]) -> asyncio.subprocess.Process:
        # bwrap's init keeps the launcher's env: the sandbox's base env, not the host's. A task's own
        # variables (maybe LD_*) reach only the shell (--setenv), never bwrap on the host.
        launcher_env = {**_BASE_ENV, "TERMINUS_CPU_S": str(self.cfg.cpu_time_limit_s)}
        if not self.limits_via_cgroups:
            launcher_env["TERMINUS_AS_KB"] = str(self.cfg.memory_limit_mb * 1024)
            if os.geteuid() != 0:
                launcher_env["TERMINUS_NPROC"] = str(self.cfg.max_processes)
        if self.cfg.disk_limit_mb and not self.workspace.disk_limited:
            launcher_env["TERMINUS_FSIZE"] = str(self.cfg.disk_limit_mb * 2048)  # dash: 512-byte blocks
        procs = self.cgroups.procs_files if self.limits_via_cgroups else []
        pidns = []
        if self.pid_namespace_limit:
            pidns = [shutil.which("unshare", path=_PATH), "--pid", "--fork", "--kill-child",
                     "/bin/sh", "-c", _PIDNS, "pidns", str(self.pid_namespace_limit)]
        argv = ["/bin/sh", "-c", _LAUNCHER, "launcher", *procs, "--", *pidns, *self._base_args, *argv_tail]
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=launcher_env, start_new_session=True, cwd="/")

    async def _kill_all(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            for pid in child_pids(proc.pid):  # the namespace's init: its death kills every member
                sigkill(pid)
            sigkill(proc.pid)
        if self.limits_via_cgroups and self.cgroups.pids():
            if not await asyncio.to_thread(self.cgroups.kill_all):
                raise SandboxError(f"could not kill every process of sandbox {self.workspace.id}")
        if proc is not None:
            await wait_for_exit(proc, f"sandbox {self.workspace.id}")

    async def _teardown(self) -> None:
        if self.cgroups:
            self.cgroups.remove()
        self.workspace.destroy()

    def _limit_hit(self) -> str | None:
        """A message when forks were refused at pids.max since the last call."""
        if not self.limits_via_cgroups:
            return None
        refused = self.cgroups.refused_forks()
        if refused <= self._refused_seen:
            return None
        self._refused_seen = refused
        return f"process limit ({self.cfg.max_processes}) reached"

    def _notices(self) -> str:
        return "\n[sandbox: disk limit reached]\n" if self.workspace.disk_full() else ""

    def oom_killed(self) -> bool:
        return self.limits_via_cgroups and self.cgroups.oom_killed()
