"""Peak memory of the whole process tree: a child process's allocation is seen and counted once."""
import subprocess
import sys
import time

import pytest

from cluster.memory import PeakMemory, TreeMemory, tree_memory_bytes

pytestmark = pytest.mark.timeout(60)


def test_peak_includes_descendants():
    base, n0 = tree_memory_bytes()
    code = "import time; b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); time.sleep(3)"
    with PeakMemory(interval_s=0.2) as m:
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ok"
        time.sleep(0.6)
        child.terminate()
        child.wait()
    assert m.peak_processes >= n0 + 1
    assert m.peak_bytes - base > 350 * 2**20        # the child's 400 MiB were counted
    assert m.peak_bytes - base < 900 * 2**20        # ... once, not per mapping
    assert "GiB" in m.describe()


def test_a_process_whose_rss_stays_put_is_not_read_again():
    """Reading PSS walks page tables (costly); a sample re-reads only the processes whose RSS moved."""
    code = "import sys, time; b = bytearray(int(sys.argv[1]) * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); time.sleep(30)"
    children = [subprocess.Popen([sys.executable, "-c", code, str(mib)], stdout=subprocess.PIPE, text=True)
                for mib in (100, 200)]
    try:
        for c in children:
            assert c.stdout.readline().strip() == "ok"
        tree = TreeMemory()
        first, n = tree.sample()
        assert tree.pss_reads == n >= 3
        again, _ = tree.sample()
        assert tree.pss_reads <= n + 1 and abs(again - first) < 64 * 2**20   # this process may have moved
        assert first == pytest.approx(tree_memory_bytes()[0], abs=64 * 2**20)   # as exact as reading all
        assert first > 300 * 2**20
    finally:
        for c in children:
            c.kill()
            c.wait()
