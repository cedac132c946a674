"""The embedded tiny model: deterministic build, Qwen3 chat format, clear path errors, real vLLM generation."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.model import ModelPathError, TinySpec, build_tiny, resolve_model_path, tiny_model_dir

ROOT = Path(__file__).resolve().parent.parent


def test_two_builds_are_byte_identical(tmp_path):
    a, b = build_tiny(tmp_path / "a"), build_tiny(tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _copy_accuracy(model_dir: Path) -> float:
    """Share of a repeated random span's tokens (after its first) the model predicts by copying."""
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 4000, (8, 300), generator=g)
    x[:, 250:262] = x[:, 40:52]    # a 12-token span seen 200 tokens earlier
    with torch.no_grad():
        predicted = model(input_ids=x).logits[:, 250:261].argmax(-1)
    return (predicted == x[:, 251:262]).float().mean().item()


def test_tiny_model_copies_what_it_saw_before_any_training(tmp_path):
    """The copy circuit (core.model.install_copy_circuit): the embedded model continues a span it saw
    earlier in its context, as a pretrained LM does; the same random model without it never does."""
    assert _copy_accuracy(resolve_model_path("tiny-copy")) > 0.8
    assert _copy_accuracy(build_tiny(tmp_path / "plain", TinySpec(copy_circuit=False))) < 0.05


def _chat_copy_accuracy(model_dir: Path, source: str) -> float:
    """Share of a report's random names (after their first token) the model predicts by copying, when
    the names were seen earlier in a command's output (source="observation") or only in its own
    earlier turn (source="own turn")."""
    import torch
    from transformers import AutoTokenizer, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = Qwen3ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def words(n: int, length: int) -> str:
        return " ".join("".join(letters[int(c)] for c in torch.randint(0, 26, (length,), generator=g))
                        for _ in range(n))

    hits = total = 0
    for _ in range(12):
        names, filler = words(3, 7), words(30, 5)
        seen_in_output = source == "observation"
        messages = [
            {"role": "system", "content": "You are a subagent. " + filler},
            {"role": "user", "content": "Please run the tests."},
            {"role": "assistant", "content": "<command>make test</command>" + ("" if seen_in_output else " Failing: " + names)},
            {"role": "user", "content": f"<observation>\n<output>\n{filler}\nFAIL {names if seen_in_output else 'none'}\n"
                                        f"{filler}\n</output>\n</observation>"},
            {"role": "assistant", "content": "<report>Failing: " + names}]
        ids = tok.apply_chat_template(messages, tokenize=True, return_tensors="pt", return_dict=True)["input_ids"]
        span = len(tok(" " + names, add_special_tokens=False)["input_ids"])
        end = ids.shape[1] - 2                                   # before <|im_end|>\n
        with torch.no_grad():
            predicted = model(input_ids=ids).logits[0, end - span:end - 1].argmax(-1)
        hits += (predicted == ids[0, end - span + 1:end]).sum().item()
        total += span - 1
    return hits / total


def test_gated_copy_circuit_copies_observations_not_its_own_text():
    """`tiny-copy-obs` (core.model.RoleTokens, _gate_to_user_turns): the induction head reads only user
    turns and matches the two tokens before a position, so the model copies names from a command's
    output (0.90; the one-token ungated circuit 0.28, lost among the letters repeated in the output),
    and not from its own earlier turn, which the ungated circuit copies as readily (its reports looped
    on their own phrases: docs/experiments.md)."""
    gated, ungated = resolve_model_path("tiny-copy-obs"), resolve_model_path("tiny-copy")
    from_output = _chat_copy_accuracy(gated, "observation")
    assert from_output > 0.6 and from_output > 2 * _chat_copy_accuracy(ungated, "observation")
    assert _chat_copy_accuracy(gated, "own turn") < 0.05
    assert _chat_copy_accuracy(ungated, "own turn") > 0.2


def test_resolve_tiny_is_cached():
    p = resolve_model_path("tiny")
    assert p == tiny_model_dir()
    mtime = (p / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("tiny") == p and (p / "model.safetensors").stat().st_mtime_ns == mtime


def test_tokenizer_speaks_qwen3_chat_format():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path("tiny"))
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
                    "<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n")
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1, special  # each special token is one id, never split
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    code = "def f(x):\n    return x != 3  # ok é\n"
    assert tok.decode(tok.encode(code, add_special_tokens=False)) == code
    cfg = json.loads((resolve_model_path("tiny") / "config.json").read_text())
    assert cfg["model_type"] == "qwen3" and cfg["tie_word_embeddings"] is True


def test_missing_or_wrong_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelPathError, match=f"model path '{tmp_path / 'nope'}' does not exist.*Hugging Face format"):
        resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPathError, match="has no config.json"):
        resolve_model_path(str(tmp_path / "empty"))
    # the tiny model's files without its tokenizer: named before transformers tries to load it
    bare = tmp_path / "bare"
    shutil.copytree(resolve_model_path("tiny"), bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ModelPathError, match=rf"model path '{bare}' has no tokenizer files.*build-tiny --out {bare}"):
        resolve_model_path(str(bare))
    (bare / "vocab.json").write_text("{}")   # a BPE vocabulary (with merges.txt) is a tokenizer too
    assert resolve_model_path(str(bare)) == bare


def test_cli_reports_bad_model_path_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "terminus.cli", "model", "chat", "--config", "tiny_cpu",
                        f"model.path={tmp_path}/missing"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert f"terminus: error: model path '{tmp_path}/missing' does not exist" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_vllm_cpu_generates_from_a_chat_prompt():
    """A real vLLM-CPU engine on the tiny model, driven through the CLI (separate process, spawn-safe)."""
    r = subprocess.run([sys.executable, "-m", "terminus.cli", "model", "chat", "--config", "tiny_cpu",
                        "--message", "Run the tests", "--max-tokens", "16", "model.path=tiny"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "prompt: '<|im_start|>user\\nRun the tests<|im_end|>\\n<|im_start|>assistant\\n'" in r.stdout
    line = [l for l in r.stdout.splitlines() if l.startswith("reply (")][0]
    assert line.startswith("reply (16 tokens)")  # random weights never emit <|im_end|> this early
