"""Peak memory of a whole job: this process and every descendant (Ray's raylet, its workers,
vLLM engine processes, sandboxes), sampled by a background thread.

Memory is summed as PSS (proportional set size: shared pages split between the processes that
map them), so torch's libraries mapped by ten workers count once, not ten times; RSS is the
fallback where PSS cannot be read.
"""
from __future__ import annotations

import os
import threading

import psutil


def tree_memory_bytes(root_pid: int | None = None) -> tuple[int, int]:
    """(bytes, number of processes) for a process and all its descendants, right now."""
    try:
        root = psutil.Process(root_pid or os.getpid())
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for p in procs:
        try:
            try:
                total += p.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return total, len(procs)


class PeakMemory:
    """`with PeakMemory() as m: ...; m.peak_bytes` — the largest sample seen while running."""

    def __init__(self, interval_s: float = 1.0, root_pid: int | None = None):
        self.interval_s = interval_s
        self.root_pid = root_pid
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        now, n = tree_memory_bytes(self.root_pid)
        if now > self.peak_bytes:
            self.peak_bytes, self.peak_processes = now, n
        return now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> "PeakMemory":
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def __enter__(self) -> "PeakMemory":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def describe(self) -> str:
        return f"peak memory {self.peak_bytes / 2**30:.2f} GiB over {self.peak_processes} processes"
