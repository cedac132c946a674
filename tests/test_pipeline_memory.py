"""Peak memory of the whole process tree: a child process's allocation is seen and counted once."""
import subprocess
import sys
import time

import pytest

from cluster.memory import PeakMemory, tree_memory_bytes

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
