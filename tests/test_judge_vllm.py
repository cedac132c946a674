"""The vLLM judge: the tiny random model in a Ray actor with JSON-schema guided decoding gives VALID verdicts
(random, but parsed and scored)."""
from __future__ import annotations

import os

import pytest

from judge.config import JudgeConfig
from judge.pool import JudgePool
from test_judge import ladder, make_task  # tests/ is on sys.path (rootdir-relative import)

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="module")
def ray_local():
    import ray

    from core.raycluster import init_ray
    init_ray(num_cpus=2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.timeout(420)
def test_tiny_vllm_judge_gives_valid_verdicts(ray_local, tmp_path):
    cfg = JudgeConfig(backend="vllm", model_path="tiny", samples=2, temperature=1.0, max_tokens=900, rationale_max_chars=24,
                      max_model_len=4096, request_timeout_s=120, max_retries=1, cache_dir=str(tmp_path))
    pool = JudgePool(cfg)
    trajs = ladder()[:4]
    try:
        pool.score({"t1": make_task()}, trajs)
        for t in trajs:
            v = t.verdict
            assert v["judge"] == "vllm:tiny"
            if v["status"] == "ok":
                assert len(v["dimensions"]) == 7 and len(v["failures"]) == 4 and v["samples"] == 2
                assert all(0 <= d["score"] <= 4 for d in v["dimensions"].values())
                assert -1.5 <= t.reward <= 1.0 and 0 <= v["agreement"] <= 1
                assert len(v["items"]) == 3 and all(i["code"] in (True, False, None) for i in v["items"])
            else:  # allowed only as a marked verdict, never a silent 0
                assert t.reward is None and v["reason"]
        ok = sum(t.verdict["status"] == "ok" for t in trajs)
        assert ok >= 3, [t.verdict["reason"] for t in trajs]
        assert pool.metrics()["judge/judged"] == ok
    finally:
        import asyncio
        asyncio.run(pool.close())
