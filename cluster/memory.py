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
    return TreeMemory(root_pid, tolerance_bytes=-1).sample()


def _pss(p: psutil.Process, rss: int) -> int:
    try:
        return p.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return rss


class TreeMemory:
    """The PSS of a process tree, sampled again and again at a small cost. Reading a process's PSS
    walks its page tables (~0.2 s of CPU for the embedded default's ~40 processes, every sample:
    taken from the 2 cores the trainer's threads spin on); its RSS costs nothing. So a process's PSS
    is read again only when its RSS has moved by more than `tolerance_bytes` since the last reading
    (a new process is always read); otherwise that reading stands (-1: read every time)."""

    def __init__(self, root_pid: int | None = None, tolerance_bytes: int = 32 * 2**20):
        self.root_pid = root_pid or os.getpid()
        self.tolerance = tolerance_bytes
        self.readings: dict[int, tuple[int, int]] = {}   # pid -> (rss, pss) when its PSS was last read
        self.pss_reads = 0

    def sample(self) -> tuple[int, int]:
        """(bytes, number of processes) right now."""
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, 0
        total, readings = 0, {}
        for p in procs:
            try:
                rss = p.memory_info().rss
                last = self.readings.get(p.pid)
                if last is None or abs(rss - last[0]) > self.tolerance:
                    last = (rss, _pss(p, rss))
                    self.pss_reads += 1
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            readings[p.pid] = last
            total += last[1]
        self.readings = readings   # the processes gone since are forgotten
        return total, len(procs)


class PeakMemory:
    """`with PeakMemory() as m: ...; m.peak_bytes` — the largest sample seen while running."""

    def __init__(self, interval_s: float = 1.0, root_pid: int | None = None):
        self.interval_s = interval_s
        self.tree = TreeMemory(root_pid)
        self.peak_bytes = 0
        self.peak_processes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        now, n = self.tree.sample()
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
