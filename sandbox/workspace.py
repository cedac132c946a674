"""Host-side pieces of a sandbox: its private directory with a copy-on-write view of the task's
repository, its disk limit, its owner's lock, and the reaping of sandboxes whose owner died.

The repository snapshot is a read-only template. Each sandbox gets `<dir>/repo`: a kernel overlayfs
mount (template as lowerdir, writes land in an upper dir) when we are root and the kernel allows
it, else a plain copy. Closing unmounts and deletes `<dir>` entirely.

Disk limit: as root, everything a sandbox can write (the overlay's upper layer, or the copy, and
its /tmp) lives on a size-limited ext4 filesystem of its own, a sparse image file in `<dir>`
loop-mounted at `<dir>/disk`: the host disk grows only by what is written, at most the limit.
Without root nothing can be mounted; each file is then bounded by RLIMIT_FSIZE (set by the
backend), and the total is not.

Liveness: the owner holds an exclusive flock on `<dir>/lock` for the sandbox's lifetime; the
reaper deletes only directories whose lock it can take. (A pid check cannot tell: a process in
another PID namespace sharing the root sees other pids.)
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from sandbox.cgroups import CGROUP_ROOT, Cgroups, sigkill  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
CGROUPS_FILE = "cgroups"  # in a sandbox's dir: where its cgroups are, for reap_stale
LOCK_FILE = "lock"        # in a sandbox's dir: flock-ed by its owner while it lives
STAGING = ".new-"         # a sandbox dir is made under this prefix, locked, then renamed
UNLOCKED_GRACE_S = 60.0   # a dir without a lock (a crash mid-creation) is stale after this
DISK_FULL_BELOW = 1 << 20  # free bytes under which a sandbox's disk counts as full
_SBIN_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def default_root() -> str:
    return os.path.join(tempfile.gettempdir(), "terminus-sandboxes")


def _mount_overlay(lower: str, upper: str, work: str, target: str) -> bool:
    if os.geteuid() != 0 or any(c in lower for c in ",:\\"):  # overlay's option syntax can't quote these
        return False
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}".encode()
    rc = _libc.mount(b"overlay", target.encode(), b"overlay", 0, opts)
    return rc == 0


def _copy_sparse(src: str, dst: str) -> None:
    """Copy a file keeping its holes (a 2 GiB empty filesystem image holds about 1 MiB of data)."""
    with open(src, "rb") as s, open(dst, "wb") as d:
        size = os.fstat(s.fileno()).st_size
        off = 0
        while off < size:
            try:
                data = os.lseek(s.fileno(), off, os.SEEK_DATA)
            except OSError:  # ENXIO: nothing but a hole up to the end
                break
            off = os.lseek(s.fileno(), data, os.SEEK_HOLE)
            while data < off:
                data += os.copy_file_range(s.fileno(), d.fileno(), off - data, data, data)
        d.truncate(size)


def _disk_template(root: str, size_mb: int) -> str:
    """An empty ext4 image of `size_mb` MiB in `root`, made once and copied for each sandbox.
    No journal (the filesystem dies with the sandbox), no reserved blocks, one inode per 8 KiB
    (node_modules-like trees), inode tables left uninitialised (no writes at mount)."""
    path = os.path.join(root, f".disk-{size_mb}M.ext4")
    if os.path.exists(path):
        return path
    mkfs = shutil.which("mkfs.ext4", path=_SBIN_PATH)
    if mkfs is None:
        raise OSError("mkfs.ext4 not found (Debian package e2fsprogs)")
    tmp = f"{path}.{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.truncate(size_mb << 20)
        r = subprocess.run([mkfs, "-q", "-F", "-m", "0", "-i", "8192", "-O", "^has_journal",
                            "-E", "lazy_itable_init=1,nodiscard", tmp], capture_output=True, text=True)
        if r.returncode != 0:
            raise OSError(f"mkfs.ext4 failed: {r.stderr.strip()[-300:]}")
        os.replace(tmp, path)  # atomic: concurrent creators each publish a complete image
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


LOOP_CTL_GET_FREE, LOOP_CONFIGURE, LO_FLAGS_AUTOCLEAR = 0x4C82, 0x4C0A, 4
MS_NOSUID, MS_NODEV = 2, 4


def _loop_mount(image: str, target: str) -> None:
    """Attach `image` to a free loop device with autoclear (released when its last mount goes) and
    mount it: two ioctls and a mount(2), several times cheaper than running mount(8)."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    img = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(20):  # another sandbox may take the free device first: EBUSY, ask again
            n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            dev = os.open(f"/dev/loop{n}", os.O_RDWR | os.O_CLOEXEC)
            try:
                # struct loop_config: fd, block_size, loop_info64 (lo_flags at offset 52), reserved
                config = bytearray(304)
                config[0:4] = img.to_bytes(4, "little")
                config[8 + 52:8 + 56] = LO_FLAGS_AUTOCLEAR.to_bytes(4, "little")
                try:
                    fcntl.ioctl(dev, LOOP_CONFIGURE, bytes(config))
                except OSError as e:
                    if e.errno == errno.EBUSY:
                        continue
                    raise
                if _libc.mount(f"/dev/loop{n}".encode(), target.encode(), b"ext4", MS_NOSUID | MS_NODEV,
                               b"noinit_itable") != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"mounting /dev/loop{n} at {target}: {os.strerror(err)}")
                return
            finally:
                os.close(dev)  # with autoclear the device now lives as long as the mount
        raise OSError(errno.EBUSY, "no free loop device after 20 tries")
    finally:
        os.close(img)
        os.close(ctl)


def _mount_disk(root: str, size_mb: int, image: str, target: str) -> None:
    """Loop-mount a fresh copy of the size's template at `target`; where the loop ioctls are
    unavailable (LOOP_CONFIGURE needs Linux 5.8), through mount(8)."""
    _copy_sparse(_disk_template(root, size_mb), image)
    try:
        return _loop_mount(image, target)
    except OSError as e:
        log.debug("loop ioctls failed (%s); trying mount(8)", e)
    mount = shutil.which("mount", path=_SBIN_PATH) or "mount"
    r = subprocess.run([mount, "-t", "ext4", "-o", "loop,noinit_itable,nosuid,nodev", image, target],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(f"mount -o loop failed: {r.stderr.strip()[-300:]}")


_warned: set[str] = set()


def warn_once(why: str, what: str) -> None:
    """Log, once per process and reason, which limit is not enforced and why."""
    if why not in _warned:
        _warned.add(why)
        log.warning("sandbox %s (%s)", what, why)


def _lock(path: str) -> int | None:
    """An exclusive flock on `path` (created if missing), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


class Workspace:
    """`<root>/<id>/` holding the lock, repo (the writable view), tmp (with home), the overlay's
    upper/work, and with a disk limit `disk.img` mounted at `disk` (which then holds tmp,
    upper/work or the copy)."""

    def __init__(self, root: str | None, repo_dir: str | None, disk_limit_mb: int = 0):
        root = root or default_root()
        os.makedirs(root, exist_ok=True)
        if root not in _reaped_roots:  # once per process: sandboxes of crashed processes
            _reaped_roots.add(root)
            reap_stale(root)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # the pid helps a human find the owner
        self.dir = os.path.join(root, self.id)
        self.repo = os.path.join(self.dir, "repo")
        self.disk = ""  # the size-limited filesystem's mount point, when there is one
        self.mode = "empty"
        # Made under a staging name and locked before it is renamed: no reaper ever sees it unlocked.
        staging = os.path.join(root, STAGING + self.id)
        os.mkdir(staging)
        self._lock_fd = _lock(os.path.join(staging, LOCK_FILE))
        if self._lock_fd is None:
            raise OSError(f"sandbox dir {staging} was locked by another process as it was made")
        os.rename(staging, self.dir)
        try:
            self._populate(root, repo_dir, disk_limit_mb)
        except BaseException:
            self.destroy()
            raise

    def _populate(self, root: str, repo_dir: str | None, disk_limit_mb: int) -> None:
        base = self.dir
        if disk_limit_mb > 0:
            if os.geteuid() != 0:
                warn_once("not root: cannot mount a size-limited filesystem",
                          f"disk limit ({disk_limit_mb} MB) applies per file only (RLIMIT_FSIZE), "
                          "not to the total written")
            else:
                base = os.path.join(self.dir, "disk")
                os.mkdir(base)
                try:
                    _mount_disk(root, disk_limit_mb, os.path.join(self.dir, "disk.img"), base)
                    self.disk = base
                except OSError as e:
                    warn_once(str(e), f"disk limit ({disk_limit_mb} MB) applies per file only "
                                      "(RLIMIT_FSIZE), not to the total written")
        self.tmp = os.path.join(base, "tmp")
        os.makedirs(os.path.join(self.tmp, "home"))
        os.chmod(self.tmp, 0o1777)
        if repo_dir is None:  # an empty work dir, writable: on the limited filesystem too
            self.repo = os.path.join(base, "repo")
            os.mkdir(self.repo)
            return
        repo_dir = os.path.abspath(repo_dir)
        if not os.path.isdir(repo_dir):
            raise FileNotFoundError(f"repository snapshot {repo_dir!r} is not a directory; "
                                    "pass the path of the task's repository (or None for an empty one)")
        upper, work = os.path.join(base, "upper"), os.path.join(base, "work")
        for d in (upper, work, self.repo):
            os.makedirs(d)
        if _mount_overlay(repo_dir, upper, work, self.repo):
            self.mode = "overlay"
            return
        os.rmdir(self.repo)
        self.repo = os.path.join(base, "repo")
        try:
            shutil.copytree(repo_dir, self.repo, symlinks=True)
        except shutil.Error as e:
            raise OSError(f"copying {repo_dir!r} into the sandbox failed (larger than "
                          f"rollout.sandbox.disk_limit_mb?): {str(e)[:300]}") from None
        self.mode = "copy"

    @property
    def disk_limited(self) -> bool:
        return bool(self.disk)

    def disk_full(self) -> bool:
        """True when the size-limited filesystem is (almost) out of space or inodes."""
        if not self.disk:
            return False
        try:
            st = os.statvfs(self.disk)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < DISK_FULL_BELOW or st.f_favail == 0

    def destroy(self) -> None:
        _unmount_all(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _unmount_all(sandbox_dir: str) -> None:
    """Detach the overlay view, then the size-limited filesystem it may sit on."""
    for mnt in ("repo", "disk"):
        path = os.path.join(sandbox_dir, mnt)
        if os.path.ismount(path):
            _libc.umount2(path.encode(), MNT_DETACH)


_reaped_roots: set[str] = set()


def _claim_if_stale(path: str) -> int | None:
    """The lock of a sandbox dir whose owner is gone (held by us now), else None. A dir without a
    lock file (a crash between mkdir and lock, or made by an older version) is stale once it is
    older than UNLOCKED_GRACE_S; so is a staging dir whose creator died."""
    lock = os.path.join(path, LOCK_FILE)
    try:
        old = time.time() - os.stat(path).st_mtime > UNLOCKED_GRACE_S
        if not os.path.exists(lock) or os.path.basename(path).startswith(STAGING):
            if not old:
                return None
        return _lock(lock)
    except OSError:  # vanished meanwhile: its owner closed it
        return None


def reap_stale(root: str) -> list[str]:
    """Remove sandboxes whose owner is gone (it was killed before close()): kill their processes,
    unmount, delete dirs and cgroups. Returns the ids removed."""
    removed = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        path = os.path.join(root, name)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        fd = _claim_if_stale(path)
        if fd is None:
            continue
        try:
            sid = name[len(STAGING):] if name.startswith(STAGING) else name
            cg = Cgroups.existing(f"terminus-{sid}", os.path.join(path, CGROUPS_FILE))
            cg.kill_all()
            cg.remove()
            _unmount_all(path)
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(name)
    return removed


