"""The openai engine against a REAL `vllm serve` of the tiny model on loopback (one server for the
module): token-exact completions (ids in, ids + logprobs out, stop strings kept), constrained
episodes in real sandboxes, and `terminus rollout` end to end through the same server."""
import asyncio
import json
import os
import subprocess
import sys

import pytest

from rollout.engine.base import Sampling
from rollout.engine.openai_engine import OpenAIEngine
from rollout.io import read_trajectories
from tasks.types import Task
from core.model import resolve_model_path
from core.openai_api import Endpoint
from core.testing.vllm_server import serve_vllm

VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = str(resolve_model_path("tiny"))
    with serve_vllm(model, "tiny", tmp_path_factory.mktemp("vllm") / "serve.log", startup_s=240) as url:
        yield url, model


def test_completions_are_token_exact(server, tok):
    base_url, _ = server
    prompt = tok.apply_chat_template([{"role": "user", "content": "Run ls."}], tokenize=True,
                                     add_generation_prompt=True, return_dict=False)

    async def go():
        client = Endpoint(base_url, "tiny", timeout_s=60, max_retries=2, max_concurrency=8)
        engine = OpenAIEngine(client)
        try:
            plain = await engine.generate(prompt, Sampling(max_tokens=16, seed=1, ignore_eos=True, min_tokens=16))
            forced = await engine.generate(prompt, Sampling(max_tokens=40, seed=2, stop=["</command>"],
                                                            regex=r"<command>echo [a-z]{1,20}</command>"))
            return plain, forced
        finally:
            await client.close()

    plain, forced = asyncio.run(go())
    assert len(plain.token_ids) == len(plain.logprobs) == 16 and plain.finish_reason == "length"
    assert all(lp <= 0.0 for lp in plain.logprobs) and any(lp < 0.0 for lp in plain.logprobs)
    text = tok.decode(forced.token_ids)
    assert text.startswith("<command>echo ") and text.endswith("</command>"), text
    assert forced.finish_reason == "stop" and forced.token_exact


def test_episodes_and_cli_through_vllm_serve(server, tok, tmp_path):
    base_url, _ = server
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "notes.txt").write_text("hello\n")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(Task(id=f"t{i}", language="shell", category="run_script", project="p",
                                  repo_dir=str(repo), request="Show notes.txt.").to_json() + "\n" for i in range(2)))
    out = tmp_path / "out.parquet"
    cmd = [f"{VENV_BIN}/terminus", "rollout", "--config", "tiny_cpu", "--tasks", str(tasks), "--out", str(out),
           "--n", "2", "--seed", "5", "rollout.engine.kind=openai", f"rollout.engine.base_url={base_url}",
           "rollout.engine.model_name=tiny", "rollout.sampling.constrain=protocol", "rollout.sampling.temperature=1.0",
           "rollout.sampling.max_tokens_per_turn=48", "rollout.episode.max_turns=3"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads(r.stdout)
    assert metrics["episodes"] == 4 and metrics["failed"] == 0
    assert "rollout: 100%" in r.stderr  # the progress bar
    trajs = read_trajectories(out)
    assert sorted(t.task_id for t in trajs) == ["t0", "t0", "t1", "t1"]
    for t in trajs:
        assert t.metadata["token_exact"] is True
        assert len(t.token_ids) == len(t.response_mask) == len(t.logprobs)
        assert tok.decode(t.token_ids, skip_special_tokens=False) == tok.apply_chat_template(t.messages, tokenize=False)
        assert t.turns and all(x.action in ("command", "report") for x in t.turns)
    assert any(x.exit_code is not None for t in trajs for x in t.turns)
