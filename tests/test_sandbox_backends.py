"""The `local` (opt-in, no isolation) and `docker`/`podman` sandbox backends, and the factory."""
import asyncio
import os

import pytest

from sandbox.config import SandboxConfig
from sandbox import SandboxError, open_sandbox
from sandbox.container import engine_available


def run(coro):
    return asyncio.run(coro)


def test_local_backend_refuses_unless_allowed():
    with pytest.raises(SandboxError, match="allow_local=true"):
        run(open_sandbox(SandboxConfig(backend="local"), None))


def test_local_backend_keeps_state_and_kills_its_process_group_on_timeout(tmp_path):
    (tmp_path / "f.txt").write_text("template\n")

    async def go():
        cfg = SandboxConfig(backend="local", allow_local=True, command_timeout_s=10)
        async with await open_sandbox(cfg, str(tmp_path)) as sb:
            a = await sb.run("export X=1; echo changed > f.txt; mkdir d; cd d")
            b = await sb.run("echo $X; pwd; cat ../f.txt")
            c = await sb.run("sleep 100123 & sleep 100124", timeout_s=0.5)
            d = await sb.run("echo $X; basename $(pwd)")
            return a, b, c, d, sb.workspace.repo
    a, b, c, d, view = run(go())
    assert a.exit_code == 0
    assert b.output == f"1\n{view}/d\nchanged\n"
    assert c.timed_out and c.exit_code == 124
    assert d.output == "1\nd\n"  # restarted shell restored cwd and exports
    assert (tmp_path / "f.txt").read_text() == "template\n"
    assert not os.path.exists(view)
    assert os.system("pgrep -f 'sleep 10012[34]' >/dev/null") != 0


def test_unknown_backend_is_a_clear_error():
    cfg = SandboxConfig()
    cfg.backend = "vm"  # bypasses config validation on purpose
    with pytest.raises(SandboxError, match="one of bwrap, docker, podman, local"):
        run(open_sandbox(cfg, None))


def _engine_reason(engine: str) -> str:
    ok, why = run(engine_available(engine))
    return "" if ok else why


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_container_backend(engine, tmp_path):
    why = _engine_reason(engine)
    if why:
        pytest.skip(f"no {engine} engine answers here: {why}")
    image = os.environ.get("TERMINUS_TEST_IMAGE", "")
    if not image:
        pytest.skip("set TERMINUS_TEST_IMAGE to a local image with bash (none can be pulled offline)")
    (tmp_path / "f.txt").write_text("template\n")

    async def go():
        cfg = SandboxConfig(backend=engine, image=image, memory_limit_mb=256, command_timeout_s=20)
        async with await open_sandbox(cfg, str(tmp_path)) as sb:
            r1 = await sb.run("cat f.txt; echo changed > f.txt; export X=7; cd /tmp")
            r2 = await sb.run("echo $X; pwd; cat /work/repo/f.txt")
            r3 = await sb.run("sleep 4321 & sleep 4322", timeout_s=1)
            r4 = await sb.run("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <$f; echo; done"
                              " | grep -c 'sleep 43[2]'; echo $X")  # no ps in a minbase image
            r5 = await sb.run("timeout 3 bash -c 'echo > /dev/tcp/1.1.1.1/80' || echo no-net")
            return r1, r2, r3, r4, r5
    r1, r2, r3, r4, r5 = run(go())
    assert r1.output == "template\n"
    assert r2.output == "7\n/tmp\nchanged\n"
    assert r3.timed_out and r3.exit_code == 124
    assert r4.output.split()[-1] == "7" and r4.output.split()[0] == "0"
    assert "no-net" in r5.output
    assert (tmp_path / "f.txt").read_text() == "template\n"
