"""Sandbox overhead: open + run `true` + close, against a bare subprocess running `true`.

Prints p50/p95 of both (same run, interleaved, so machine noise hits both alike), the p50
overhead, the per-command latency inside an open sandbox, and 64 sandboxes opened concurrently
on this machine (failures counted). Target: p50 overhead < 25 ms; 64 concurrent, 0 failures.
Also the cost of the disk limit (bwrap: a loop-mounted ext4 per sandbox): open+close with and
without it (`disk_limit_mb=0`), interleaved, and their ratio.

    python benchmarks/sandbox.py [--n 200] [--concurrent 64] [--backend bwrap] [--image IMG]
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox.config import SandboxConfig  # noqa: E402
from sandbox import open_sandbox  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def bare_true() -> float:
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    return time.perf_counter() - t


async def sandbox_true(cfg: SandboxConfig, repo: str) -> float:
    t = time.perf_counter()
    async with await open_sandbox(cfg, repo) as sb:
        r = await sb.run("true")
        if r.exit_code != 0:
            raise RuntimeError(f"`true` failed in the sandbox: {r}")
    return time.perf_counter() - t


async def concurrent(cfg: SandboxConfig, repo: str, n: int) -> tuple[int, float, list[str]]:
    async def one(i: int) -> None:
        async with await open_sandbox(cfg, repo) as sb:
            r = await sb.run(f"echo {i} > mine && cat mine && ls /work/repo/src | wc -l")
            if r.exit_code != 0 or r.output != f"{i}\n2\n":
                raise RuntimeError(f"sandbox {i}: {r}")

    t = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = [repr(e)[:200] for e in results if isinstance(e, BaseException)]
    return len(errors), time.perf_counter() - t, errors


async def main(args) -> int:
    cfg = SandboxConfig(backend=args.backend, allow_local=args.backend == "local")
    if args.image:
        cfg.image = args.image
    with tempfile.TemporaryDirectory() as repo:
        os.makedirs(os.path.join(repo, "src"))
        for name in ("a.py", "b.py"):
            with open(os.path.join(repo, "src", name), "w") as f:
                f.write("x = 1\n")
        for _ in range(5):  # warm up page cache and the Python side
            await sandbox_true(cfg, repo)
            await bare_true()
        no_disk = dataclasses.replace(cfg, disk_limit_mb=0)
        bare, sbx, sbx_no_disk = [], [], []
        for _ in range(args.n):
            bare.append(await bare_true())
            sbx.append(await sandbox_true(cfg, repo))
            sbx_no_disk.append(await sandbox_true(no_disk, repo))
        async with await open_sandbox(cfg, repo) as sb:
            per_cmd = []
            for _ in range(args.n):
                t = time.perf_counter()
                await sb.run("true")
                per_cmd.append(time.perf_counter() - t)
        failures, wall, errors = await concurrent(cfg, repo, args.concurrent)

    ms = lambda x: f"{1000 * x:7.2f} ms"  # noqa: E731
    overhead = statistics.median(sbx) - statistics.median(bare)
    print(f"backend={args.backend} n={args.n} cpus={os.cpu_count()}")
    print(f"bare subprocess `true`        p50 {ms(pct(bare, .5))}  p95 {ms(pct(bare, .95))}")
    print(f"sandbox open+run true+close   p50 {ms(pct(sbx, .5))}  p95 {ms(pct(sbx, .95))}")
    print(f"  without the disk limit      p50 {ms(pct(sbx_no_disk, .5))}  p95 {ms(pct(sbx_no_disk, .95))}"
          f"  (disk limit {cfg.disk_limit_mb} MB costs {ms(statistics.median(sbx) - statistics.median(sbx_no_disk))}"
          f" p50; ratio with/without {statistics.median(sbx) / statistics.median(sbx_no_disk):.2f}x)")
    print(f"command in an open sandbox    p50 {ms(pct(per_cmd, .5))}  p95 {ms(pct(per_cmd, .95))}")
    print(f"p50 overhead over bare        {ms(overhead)}   (target < 25 ms: "
          f"{'PASS' if overhead < 0.025 else 'FAIL'}; ratio sandbox/bare p50 = "
          f"{statistics.median(sbx) / statistics.median(bare):.1f}x)")
    print(f"{args.concurrent} concurrent sandboxes       {failures} failures in {wall:.2f} s "
          f"(target 0: {'PASS' if failures == 0 else 'FAIL'})")
    for e in errors[:5]:
        print("  ", e)
    return 0 if overhead < 0.025 and failures == 0 else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--concurrent", type=int, default=64)
    p.add_argument("--backend", default="bwrap", choices=["bwrap", "local", "docker", "podman"])
    p.add_argument("--image", default="", help="docker/podman: a local image with bash")
    sys.exit(asyncio.run(main(p.parse_args())))
