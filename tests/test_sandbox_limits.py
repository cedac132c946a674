"""Sandbox limits: which cgroups a host allows (fake cgroup trees), v2 control files, the disk limit,
the process limit for root without cgroups, the owner's lock against reaping, and the init's env."""
import asyncio
import logging
import os
import subprocess
import sys
import time

import pytest

from sandbox.config import SandboxConfig
from sandbox import open_sandbox
from sandbox import workspace
from sandbox.cgroups import CgroupChoice, Cgroups, choose_cgroups, own_cgroups
from sandbox.workspace import LOCK_FILE, reap_stale

from tests.test_sandbox import _bwrap_works, host_processes_matching

needs_bwrap = pytest.mark.skipif(bool(_bwrap_works()), reason=_bwrap_works() or "bwrap works")
ROOT = os.geteuid() == 0

HYBRID_SELF = "4:memory:/jobs/a\n8:pids:/jobs/a\n0::/jobs/a\n"   # v1 controllers + the v2 line
V2_SELF = "0::/workers/w1\n"                                       # pure v2


def run(coro):
    return asyncio.run(coro)


def cfg(**kw) -> SandboxConfig:
    base = dict(command_timeout_s=20.0, memory_limit_mb=256, max_processes=64, output_limit_bytes=4096)
    base.update(kw)
    return SandboxConfig(**base)


# --- fake cgroup trees -----------------------------------------------------------------------------

def make_v1(root, own="/jobs/a"):
    for ctrl in ("memory", "pids"):
        d = root / ctrl / own.lstrip("/")
        d.mkdir(parents=True)
        (root / ctrl / "cgroup.procs").write_text("")


def make_v2(root, own="/workers/w1", controllers="cpuset cpu io memory hugetlb pids", at=""):
    mount = root / at if at else root
    parent = mount / os.path.dirname(own).lstrip("/")
    (mount / own.lstrip("/")).mkdir(parents=True)
    (mount / "cgroup.controllers").write_text(controllers + "\n")
    (parent / "cgroup.controllers").write_text(controllers + "\n")
    (parent / "cgroup.subtree_control").write_text("")
    return parent


@pytest.fixture
def read_only():
    """Make a dir read-only as a container's cgroupfs is: a read-only bind mount as root (root
    writes through any mode bits), mode bits otherwise."""
    done = []

    def make(path):
        if ROOT:
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
            done.append(lambda: subprocess.run(["umount", str(path)], check=True))
        else:
            for p in [path, *path.rglob("*")]:
                p.chmod(0o555 if p.is_dir() else 0o444)
            done.append(lambda: [p.chmod(0o755) for p in [path, *path.rglob("*")] if p.is_dir()])
    yield make
    for undo in done:
        undo()


def test_own_cgroups_parses_v1_and_v2_lines():
    assert own_cgroups(HYBRID_SELF + "9:name=systemd:/\n3:cpu,cpuacct:/x\n") == {
        "memory": "/jobs/a", "pids": "/jobs/a", "unified": "/jobs/a", "name=systemd": "/",
        "cpu": "/x", "cpuacct": "/x"}


def test_v1_only(tmp_path):
    make_v1(tmp_path)
    c = choose_cgroups(str(tmp_path), HYBRID_SELF)
    assert c == CgroupChoice("v1", {"memory": f"{tmp_path}/memory/jobs/a", "pids": f"{tmp_path}/pids/jobs/a"})


def test_v2_only_writable_places_sandboxes_beside_our_cgroup(tmp_path):
    parent = make_v2(tmp_path)
    c = choose_cgroups(str(tmp_path), V2_SELF)
    assert c == CgroupChoice("v2", {"unified": str(parent)}) and parent == tmp_path / "workers"


def test_v2_at_the_namespace_root_uses_the_root(tmp_path):
    make_v2(tmp_path, own="/x")
    assert choose_cgroups(str(tmp_path), "0::/\n") == CgroupChoice("v2", {"unified": str(tmp_path)})


def test_v2_read_only_falls_back_to_v1_or_none(tmp_path, read_only):
    make_v2(tmp_path / "v2only")
    read_only(tmp_path / "v2only")
    c = choose_cgroups(str(tmp_path / "v2only"), V2_SELF)
    assert c.version == "none" and "not writable" in c.why_not and "v1 memory controller not mounted" in c.why_not

    hybrid = tmp_path / "hybrid"
    make_v1(hybrid)
    make_v2(hybrid, own="/jobs/a", at="unified")
    read_only(hybrid / "unified")
    assert choose_cgroups(str(hybrid), HYBRID_SELF).version == "v1"


def test_hybrid_without_v2_controllers_uses_v1(tmp_path):
    """This machine's layout: a cgroup2 mount at unified/ whose controllers all sit in v1."""
    make_v1(tmp_path)
    make_v2(tmp_path, own="/jobs/a", controllers="hugetlb", at="unified")
    assert choose_cgroups(str(tmp_path), HYBRID_SELF).version == "v1"


def test_none(tmp_path):
    c = choose_cgroups(str(tmp_path), "")
    assert c.version == "none" and c.parents == {}
    assert c.why_not == (f"no cgroup v2 hierarchy at {tmp_path}; "
                         f"cgroup v1 memory controller not mounted at {tmp_path}/memory")


def test_v2_cgroup_files_on_a_fake_tree(tmp_path):
    """What a v2 sandbox cgroup writes and reads (no v2 controllers can be used on this machine)."""
    parent = make_v2(tmp_path)
    (parent / "cgroup.subtree_control").write_text("cpu\n")
    cg = Cgroups("terminus-x", 256, 64, CgroupChoice("v2", {"unified": str(parent)}))
    assert cg.available and cg.version == "v2", cg.why_not
    d = parent / "terminus-x"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (d / "memory.max").read_text() == str(256 << 20) and (d / "pids.max").read_text() == "64"
    assert cg.procs_files == [str(d / "cgroup.procs")]
    (d / "pids.events").write_text("max 7\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.refused_forks() == 7 and cg.oom_killed()
    cg.save(str(tmp_path / "record"))
    again = Cgroups.existing("terminus-x", str(tmp_path / "record"))
    assert again.paths == {"unified": str(d)} and again.version == "v2"


def test_cgroup_creation_failure_says_why(tmp_path):
    cg = Cgroups("terminus-x", 256, 64, CgroupChoice("v2", {"unified": str(tmp_path / "gone")}))
    assert not cg.available and "creating the sandbox's cgroup (v2) failed" in cg.why_not


# --- no cgroups: warning and the process limit for root -------------------------------------------

@needs_bwrap
def test_without_cgroups_a_warning_names_what_is_not_enforced(caplog, monkeypatch):
    monkeypatch.setattr(workspace, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="sandbox.workspace"):
        r = run(_one(cfg(use_cgroups=False), "echo ok"))
    assert r.output == "ok\n"
    msg = caplog.text
    assert "use_cgroups=false" in msg and "not enforced: a sandbox-wide memory limit" in msg
    assert "RLIMIT_AS" in msg and "processes" in msg


async def _one(c, command, **kw):
    async with await open_sandbox(c, None) as sb:
        return await sb.run(command, **kw)


@needs_bwrap
def test_root_without_cgroups_is_held_to_a_process_limit():
    from sandbox.bwrap import pidns_limit_supported
    if not ROOT or not pidns_limit_supported():
        pytest.skip("needs root and pid_max per PID namespace (Linux >= 6.14)")

    async def go():
        async with await open_sandbox(cfg(use_cgroups=False, max_processes=64), None) as sb:
            assert sb.pid_namespace_limit == 364
            # bash retries a refused fork with growing sleeps: count while it does, then time out
            bomb = asyncio.ensure_future(sb.run("for i in $(seq 1 600); do sleep 300654 & done", timeout_s=8))
            await asyncio.sleep(4)
            running = len(host_processes_matching("300654"))
            return running, await bomb, await sb.run("echo alive")
    running, bomb, after = run(go())
    assert 64 <= running < 364, running  # without the limit all 600 run
    assert bomb.timed_out and "fork" in bomb.output  # bash: fork: retry: Resource temporarily unavailable
    assert host_processes_matching("300654") == []
    assert after.output == "alive\n"


# --- disk limit ------------------------------------------------------------------------------------

@needs_bwrap
@pytest.mark.skipif(not ROOT, reason="a size-limited filesystem needs root to mount (else RLIMIT_FSIZE)")
def test_disk_limit_stops_writes_and_says_so(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "f").write_text("x\n")

    async def go():
        async with await open_sandbox(cfg(disk_limit_mb=20), str(repo)) as sb:
            assert sb.workspace.disk_limited and sb.workspace.mode == "overlay"
            big = await sb.run("dd if=/dev/zero of=big bs=1M count=100 2>&1 | head -1; "
                               "dd if=/dev/zero of=/tmp/big bs=1M count=100 2>&1 | head -1")
            image = os.path.join(sb.workspace.dir, "disk.img")
            on_host = os.stat(image).st_blocks * 512
            freed = await sb.run("rm big /tmp/big; echo freed")
            return big, on_host, freed, sb.workspace.dir
    big, on_host, freed, wdir = run(go())
    assert big.output.count("No space left on device") == 2, big.output
    assert big.output.endswith("\n[sandbox: disk limit reached]\n")
    assert on_host <= 21 << 20, f"the sandbox's image holds {on_host} bytes of the host disk"
    assert freed.output == "freed\n"  # space back: no marker
    assert not (repo / "big").exists() and not os.path.exists(wdir)
    with open("/proc/mounts") as f:
        assert wdir not in f.read()


@needs_bwrap
def test_disk_limit_zero_mounts_nothing():
    async def go():
        async with await open_sandbox(cfg(disk_limit_mb=0), None) as sb:
            return sb.workspace.disk_limited, await sb.run("echo hi > f; cat f")
    limited, r = run(go())
    assert not limited and r.output == "hi\n"


# --- reaping by lock -------------------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_reaper_spares_a_locked_sandbox_and_removes_an_unlocked_one(tmp_path):
    """The dir's pid (999999999) exists nowhere here, as an owner in another PID namespace looks:
    the pid check reaped such live sandboxes; the lock does not."""
    live, stale = tmp_path / "999999999-live", tmp_path / "999999999-stale"
    for d in (live, stale):
        d.mkdir()
        (d / LOCK_FILE).write_text("")
        (d / "tmp").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live / LOCK_FILE)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert reap_stale(str(tmp_path)) == ["999999999-stale"]
        assert live.is_dir() and not stale.exists()
    finally:
        holder.communicate("", timeout=10)
    assert reap_stale(str(tmp_path)) == ["999999999-live"]  # its owner is gone now
    assert not live.exists()


def test_reaper_waits_for_dirs_without_a_lock(tmp_path):
    fresh, old = tmp_path / "1-fresh", tmp_path / ".new-1-old"
    fresh.mkdir()
    old.mkdir()
    past = time.time() - 2 * workspace.UNLOCKED_GRACE_S
    os.utime(old, (past, past))
    assert reap_stale(str(tmp_path)) == [".new-1-old"]
    assert fresh.is_dir()


def test_a_workspace_holds_its_lock_until_destroyed(tmp_path):
    ws = workspace.Workspace(str(tmp_path), None)
    assert reap_stale(str(tmp_path)) == [] and os.path.isdir(ws.dir)
    ws.destroy()
    assert os.listdir(tmp_path) == []


# --- the init's environment ------------------------------------------------------------------------

@needs_bwrap
def test_init_process_has_the_sandbox_environment_not_the_hosts(monkeypatch):
    monkeypatch.setenv("TERMINUS_HOST_SECRET", "host-only")

    async def go():
        async with await open_sandbox(cfg(), None, env={"TASK_VAR": "1"}) as sb:
            return (await sb.run("tr '\\0' '\\n' </proc/1/environ")), (await sb.run("echo $TASK_VAR"))
    init, shell = run(go())
    env = dict(line.split("=", 1) for line in init.output.splitlines())
    assert env == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp/home",
                   "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat",
                   "USER": "root"}, init.output
    assert shell.output == "1\n"  # a task's variables reach the shell only
