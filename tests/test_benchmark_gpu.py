"""benchmarks/gpu.py, the prepared GPU check, run on CPU with its small shape (gloo): the FSDP2 steps
train, and the broadcast delivers every tensor intact."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_token_hand_computed():
    b = _bench()
    # SMALL, a layer: q 128x128 + k,v 2x128x64 + o 128x128 + q/k norms 2x32 + norms 2x128 + MLP 3x128x256
    assert b.SMALL.layer_params == 16384 + 16384 + 16384 + 64 + 256 + 98304 == 147776
    dense, attention, head = 6 * 2 * 147776, 6 * 2 * 4 * 32 * 128, 6 * 1024 * 128 * 0.5
    assert b.flops_per_token(b.SMALL, 128, 0.5) == dense + attention + head == 2_363_136
    assert 26.5e9 < b.flops_per_token(b.FULL, 4096, 0.5) < 26.7e9      # Qwen3-4B at 4096 tokens
    assert b.peak_flops("NVIDIA H100 80GB HBM3") == 989e12 and b.peak_flops("cpu") == 0.0


def test_small_run_on_cpu(tmp_path):
    b = _bench()
    out = tmp_path / "figures.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--small", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    f = json.loads(out.read_text())
    t, w = f["trainer"], f["broadcast"]
    assert t["ranks"] == 2 and t["backend"] == "gloo" and t["params"] == b.SMALL.num_params
    assert len(t["losses"]) == 4 and t["losses"][-1] < t["losses"][0] - 0.5   # the same batch: it must learn
    assert t["tokens_per_s"] > 0 and t["mfu"] is None                        # no peak known for a CPU
    # every tensor as vLLM loads it (core.model.hf_weights: the tied head sent as lm_head.weight too), bf16
    n = b.SMALL.num_params + b.SMALL.embedding_params
    assert w["verified"] is True and w["bytes"] == 2 * n and w["tensors"] == 2 * 11 + 3   # 11 per layer; embed, norm, head
    assert "[trainer]" in r.stdout and "checksums match" in r.stdout
