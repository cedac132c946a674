"""`terminus eval`: pure metrics; a run over an OpenAI-compatible subagent that fails midway (only
its episodes are lost, and they are reported); bad input refused before work; and the done-when
check: the tiny model vs a perturbed copy (two HF dirs, real vLLM on CPU, real bwrap sandboxes)
print the table and write the JSON + PNG plots, which `--compare` can merge."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.trajectory import Trajectory, Turn
from tasks.types import Fact, GroundTruth, Task
from evaluation.metrics import aggregate, episode_row, fact_accuracy
from evaluation.render import markdown_table
from evaluation.subagents import SubagentError, check_hf_dir, parse_subagent
from evaluation.tasks_io import write_task_list
from core.model import resolve_model_path
from core.testing.openai_server import Reply, ScriptedOpenAIServer

TERMINUS = str(Path(sys.executable).parent / "terminus")


def _tasks(root: Path, n: int = 2) -> list[Task]:
    repo = root / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "t.py").write_text("print('3 passed, 1 failed: test_alpha')\nraise SystemExit(1)\n")
    facts = [Fact("failing_test", "test_alpha fails", [r"test_alpha"]), Fact("count", "3 pass", [r"\b3 passed"])]
    return [Task(f"e{i}", "python", "run_tests", "p", str(repo), f"Run t.py (case {i}) and report failures.",
                 ground_truth=GroundTruth(exit_status=1, facts=facts), split="validation") for i in range(n)]


def test_metrics_are_pure_and_count_failures():
    task = Task(
        "x", "py", "run_tests", "p", "", "r",
        ground_truth=GroundTruth(facts=[Fact("a", "", [r"test_alpha"]), Fact("b", "", [r"\b3 passed"]),
                                        Fact("c", "no pattern: not checkable")]))
    assert fact_accuracy(task, {"summary": "test_alpha fails", "details": "3 passed"}) == 1.0
    assert fact_accuracy(task, {"summary": "test_alpha fails"}) == 0.5
    assert fact_accuracy(task, None) == 0.0
    good = Trajectory("x", [], [], [], [], turns=[Turn("", "command", "ls", observation="one two three four " * 10),
                                                 Turn("", "report")],
                      report={"status": "failure", "summary": "test_alpha fails"}, finish_reason="report",
                      metadata={"wall_s": 2.0})
    bad = Trajectory("x", [], [], [], [], finish_reason="error", error="engine: boom", metadata={"wall_s": 9.0})
    count = lambda s: len(s.split())  # noqa: E731
    rows = [episode_row(task, good, {"score": 0.8, "dimensions": {"d": 1.0}, "failure_modes": ["m"]}, count),
            episode_row(task, bad, None, count)]
    assert rows[0]["output_tokens_read"] == 40 and rows[0]["report_tokens"] == 3
    assert rows[0]["compression"] == pytest.approx(40 / 3)
    s = aggregate(rows)
    assert s["episodes"] == 2 and s["failed"] == 1 and s["failures"][0]["error"] == "engine: boom"
    assert s["score"] == pytest.approx(0.4)          # the failed episode scores 0, it is not dropped
    assert s["fact_accuracy"] == pytest.approx(0.25) and s["latency_s"] == 2.0
    assert s["failure_mode_rates"] == {"m": 0.5}
    table = markdown_table({"a": s})
    assert "| a | 2 | 1 | 0.400 |" in table and "fail:m" in table


def test_subagent_specs_and_missing_checkpoint(tmp_path):
    assert parse_subagent("openai:gpt-x@http://h:1/v1").kind == "openai"
    s = parse_subagent("rl=runs/a/hf")
    assert (s.label, s.kind, s.path) == ("rl", "hf", "runs/a/hf")
    assert parse_subagent("vllm-server:m@http://h/v1").api == "completions"
    with pytest.raises(SubagentError, match="not found"):
        check_hf_dir(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SubagentError, match="config.json"):
        check_hf_dir(str(tmp_path / "empty"))


def endpoint_subagent(body):
    """Answers well, except for case 1, where the endpoint fails (HTTP 500) midway through the run."""
    first = next(m for m in body["messages"] if m["role"] == "user")["content"]
    if "case 1" in first:
        return Reply(status=500)
    if sum(m["role"] == "assistant" for m in body["messages"]) == 0:
        return Reply("<command>python3 t.py</command>")
    return Reply("<report><status>failure</status><summary>test_alpha fails</summary>"
                 "<details>exit 1: 3 passed, 1 failed</details></report>")


def test_eval_endpoint_subagent_failure_midway_and_bad_input(tmp_path):
    write_task_list(_tasks(tmp_path, 3), tmp_path / "tasks.jsonl")
    out = tmp_path / "out"
    with ScriptedOpenAIServer(endpoint_subagent, model="sub") as srv:
        base = [TERMINUS, "eval", "--tasks-file", str(tmp_path / "tasks.jsonl"), "--out", str(out),
                "rollout.engine.max_retries=0", "rollout.sandbox.command_timeout_s=10"]
        r = subprocess.run(base + ["-s", f"api=openai:sub@{srv.base_url}"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        # bad input: a checkpoint that does not exist, a model the endpoint does not serve -> nothing runs
        n = len(srv.requests)
        for spec, msg in ((str(tmp_path / "no_ckpt"), "not found"), (f"openai:other@{srv.base_url}", "does not serve")):
            bad = subprocess.run(base + ["-s", f"api=openai:sub@{srv.base_url}", "-s", f"x={spec}"],
                                 capture_output=True, text=True, timeout=60)
            assert bad.returncode == 2 and msg in bad.stderr
        assert len(srv.requests) == n
    s = json.loads((out / "results.json").read_text())["subagents"]["api"]["summary"]
    assert s["episodes"] == 3 and s["failed"] == 1 and s["failures"][0]["task_id"] == "e1"
    assert "failed episode (api): e1" in r.stderr
    assert s["fact_accuracy"] == pytest.approx(2 / 3) and s["turns"] == 2.0 and s["compression"] > 0
    assert "| api | 3 | 1 |" in r.stdout


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory):
    """A second checkpoint: the tiny model with noise added to every weight (stands in for a trained one)."""
    import torch
    from safetensors.torch import load_file

    from core.model import save_hf_weights
    src = Path(resolve_model_path("tiny"))
    dst = tmp_path_factory.mktemp("ckpt") / "perturbed"
    shutil.copytree(src, dst)
    g = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in load_file(dst / "model.safetensors").items()}
    save_hf_weights(state, dst, tie_word_embeddings=json.loads((src / "config.json").read_text()).get("tie_word_embeddings", False))
    return dst


def test_eval_tiny_before_after_writes_table_and_plots(tmp_path, perturbed):
    write_task_list(_tasks(tmp_path, 2), tmp_path / "tasks.jsonl")
    out = tmp_path / "eval"
    r = subprocess.run([TERMINUS, "eval", "--tasks-file", str(tmp_path / "tasks.jsonl"), "--out", str(out),
                        "-s", "before=tiny", "-s", f"after={perturbed}", "rollout.episode.max_turns=2",
                        "rollout.sampling.max_tokens_per_turn=24", "rollout.sampling.constrain=protocol",
                        "rollout.sandbox.command_timeout_s=10"],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| before |" in r.stdout and "| after |" in r.stdout
    data = json.loads((out / "results.json").read_text())
    for name in ("before", "after"):
        s = data["subagents"][name]["summary"]
        assert s["episodes"] == 2 and s["failed"] == 0, s["failures"]
        assert 1 <= s["turns"] <= 2 and s["latency_s"] > 0
        assert all(0.0 <= s[k] <= 1.0 for k in ("fact_accuracy", "report_rate"))
        assert -2.0 <= s["score"] <= 1.0    # the reward: quality minus failure-mode penalties
        assert set(s["dimensions"]) >= {"task_completion", "protocol_compliance"}
    for png in ("quality.png", "failures.png", "cost.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    cmp = subprocess.run([TERMINUS, "eval", "--compare", str(out / "results.json"), "--out", str(tmp_path / "cmp")],
                         capture_output=True, text=True, timeout=60)
    assert cmp.returncode == 0 and "| eval/before |" in cmp.stdout and (tmp_path / "cmp" / "quality.png").exists()


def test_results_table_prints_the_training_time_apart_from_the_evaluations():
    """The time target counts SFT + GRPO, not the evaluations: the table's last line says it apart."""
    from evaluation.heldout import results_table
    e = {"reward_mean": 0.5, "reward_sem": 0.03, "exact_fact_rate": 0.4}
    wall = {"sft": 300.0, "eval_sft": 120.0, "grpo": 420.0, "eval_grpo": 60.0, "total": 1200.0, "startup": 90.0}
    table = results_table({"sft": e, "grpo": e}, {}, wall).splitlines()
    assert table[1].startswith("sft") and table[1].endswith("7.0 min")      # the stage with its evaluation
    assert table[2].startswith("grpo") and table[2].endswith("8.0 min")
    assert table[-1] == "total wall time 20.0 min (startup 1.5 min; training, SFT + GRPO: 12.0 min)"
