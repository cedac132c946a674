"""`terminus distill` end to end (the CLI, in a subprocess) with a teacher behind a real
OpenAI-protocol server on loopback and real bwrap sandboxes: judged, thresholded, deduplicated,
written with provenance, resumable; a teacher failing midway costs only its tasks; bad input
(unreachable endpoint, unserved model, no tasks) stops before any work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.types import Fact, GroundTruth, ReferenceSolution, Task
from evaluation.distill import dedup_key
from rollout.io import read_trajectories
from rollout.teacher import load_demos
from evaluation.tasks_io import write_task_list
from core.net import free_port
from core.testing.openai_server import Reply, ScriptedOpenAIServer

TERMINUS = str(Path(sys.executable).parent / "terminus")


def body(status: str, summary: str, exit_status: int) -> str:
    return f"<status>{status}</status><summary>{summary}</summary><details>exit status {exit_status}</details>"


def make_tasks(root: Path) -> list[Task]:
    repo = root / "repo"
    repo.mkdir()
    (repo / "count.py").write_text("print('7 passed, 1 failed: test_edge')\nraise SystemExit(1)\n")
    (repo / "hello.sh").write_text("echo hello world\n")
    facts = [Fact("failing_test", "test_edge fails", [r"test_edge"]), Fact("passing_count", "7 pass", [r"\b7\b"])]
    return [
        Task("t-count", "python", "run_tests", "p1", str(repo), "Run count.py and report the failures.",
             ground_truth=GroundTruth(exit_status=1, facts=facts),
             reference=ReferenceSolution(["python3 count.py"], body("failure", "test_edge fails; 7 passed, 1 failed", 1))),
        Task("t-hello", "shell", "run_script", "p2", str(repo), "Run hello.sh and tell me what it prints.",
             ground_truth=GroundTruth(exit_status=0, facts=[Fact("output", "hello world", [r"hello world"])]),
             reference=ReferenceSolution(["sh hello.sh"], body("success", "it prints hello world", 0))),
        # the teacher gets this one wrong: below the threshold, not kept
        Task("t-wrong", "shell", "run_script", "p3", str(repo), "Run hello.sh, then say goodbye.",
             ground_truth=GroundTruth(exit_status=0, facts=[Fact("output", "goodbye", [r"goodbye moon"])]),
             reference=ReferenceSolution(["sh hello.sh"], body("success", "it prints hello world", 0))),
        # the teacher endpoint fails on this one
        Task("t-broken", "shell", "run_script", "p4", str(repo), "BROKEN endpoint for this request.",
             reference=ReferenceSolution(["true"], body("success", "nothing", 0))),
    ]


def teacher_for(tasks):
    """Replays each task's reference solution through the protocol (the teacher an API would be)."""
    by_request = {t.request: t for t in tasks}

    def script(body):
        first = next(m for m in body["messages"] if m["role"] == "user")["content"]
        task = next(t for r, t in by_request.items() if first.startswith(r))
        if "BROKEN" in task.request:
            return Reply(status=500)
        n = sum(m["role"] == "assistant" for m in body["messages"])
        cmds = task.reference.commands
        if n < len(cmds):
            return Reply(f"I will run it.\n<command>{cmds[n]}</command>")
        return Reply(f"<report>{task.reference.report}</report>")
    return script


def run_cli(*args, timeout=120):
    return subprocess.run([TERMINUS, "distill", "--config", "tiny_cpu", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def setup(tmp_path):
    tasks = make_tasks(tmp_path)
    write_task_list(tasks, tmp_path / "tasks.jsonl")
    return tasks, tmp_path


def test_distill_filters_dedups_and_resumes(setup):
    tasks, tmp = setup
    out = tmp / "sft.jsonl"
    common = ["--tasks-file", str(tmp / "tasks.jsonl"), "--out", str(out), "--samples", "2", "--threshold", "0.8",
              "rollout.engine.max_retries=0", "rollout.sandbox.command_timeout_s=10"]
    with ScriptedOpenAIServer(teacher_for(tasks), model="teacher") as srv:
        r = run_cli("--teacher", f"openai:teacher@{srv.base_url}", *common)
        assert r.returncode == 0, r.stderr[-2000:]
        stats = json.loads(r.stdout[:r.stdout.rindex("}") + 1])
        first_requests = len(srv.requests)
        # resume: finished tasks are skipped; only the failed one is retried
        r2 = run_cli("--teacher", f"openai:teacher@{srv.base_url}", *common)
        stats2 = json.loads(r2.stdout[:r2.stdout.rindex("}") + 1])
        retried = len(srv.requests) - first_requests
    assert stats["episodes"] == 8 and stats["episode_errors"] == 2
    assert [f["task_id"] for f in stats["failed_tasks"]] == ["t-broken"] and "500" in stats["failed_tasks"][0]["first"]
    assert stats["below_threshold"] == 2 and stats["duplicates"] == 2 and stats["kept"] == 2
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["provenance"]["task"]["id"] for r in rows) == ["t-count", "t-hello"]
    for row in rows:
        prov, traj = row["provenance"], row["trajectory"]
        assert prov["teacher"]["model"] == "teacher" and prov["verdict"]["score"] >= 0.8
        assert traj["report"] and traj["error"] is None and traj["reward"] == prov["verdict"]["score"]
        assert prov["dedup_key"] == dedup_key(_traj(traj))
    assert stats2["skipped_done"] == 3 and stats2["kept"] == 0 and retried == 2  # t-broken, 2 samples, no retries
    assert len(out.read_text().splitlines()) == 2
    assert "t-broken" in r.stderr or "t-broken" in r.stdout


def _traj(d):
    from rollout.trajectory import Trajectory
    return Trajectory.from_dict(d)



def test_teacher_in_the_job_plays_judges_and_filters_with_its_own_endpoint_settings(setup, tok):
    """trainer.sft.teacher.kind=openai as `terminus train` runs it (evaluation.distill.teacher_demos): the
    teacher's own sampling reaches its endpoint, the job's judge filters at min_reward, the counts add
    up, and what is kept is the student's token-exact sequence with provenance."""
    import asyncio

    from evaluation.distill import teacher_demos
    from evaluation.judging import open_judge
    from terminus.config import load_config

    tasks, tmp = setup
    out = tmp / "teacher_demos.jsonl"
    with ScriptedOpenAIServer(teacher_for(tasks), model="teacher") as srv:
        cfg = load_config("tiny_cpu", ["trainer.sft.teacher.kind=openai", f"trainer.sft.teacher.base_url={srv.base_url}",
                                       "trainer.sft.teacher.model=teacher", "trainer.sft.teacher.max_retries=0",
                                       "trainer.sft.teacher.temperature=0.3", "trainer.sft.teacher.min_reward=0.8",
                                       "rollout.sampling.temperature=0.9", "rollout.sandbox.command_timeout_s=10"])

        async def go():
            judge, close = open_judge(cfg, run_dir=str(tmp))
            try:
                return await teacher_demos(cfg, tasks, judge, tok, out)
            finally:
                await close()
        demos, counts = asyncio.run(go())
        temperatures = {r["temperature"] for r in srv.requests if "messages" in r}
    assert temperatures == {0.3}          # the teacher's sampling, not the student's
    assert counts == {"episodes": 4, "kept": 2, "kept_total": 2, "kept_without_report": 0, "below_threshold": 1, "unjudgeable": 0,
                      "episode_errors": 1, "duplicates": 0, "tasks_done_before": 0, "dropped": 2}
    assert sorted(d.task_id for d in demos) == ["t-count", "t-hello"]
    for d in demos:
        prov = d.metadata["provenance"]
        assert prov["teacher"]["model"] == "teacher" and prov["threshold"] == 0.8 and prov["verdict"]["score"] >= 0.8
        assert tok.decode(d.token_ids, skip_special_tokens=False) == tok.apply_chat_template(d.messages, tokenize=False)
        assert d.metadata["token_exact"] is False    # the chat text, tokenized for the student

def test_distill_bad_input_fails_before_work(setup):
    tasks, tmp = setup
    out = tmp / "sft.jsonl"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    r = run_cli("--teacher", f"openai:teacher@{dead}", "--tasks-file", str(tmp / "tasks.jsonl"), "--out", str(out))
    assert r.returncode == 2 and "unreachable" in r.stderr and dead in r.stderr
    with ScriptedOpenAIServer([], model="teacher") as srv:
        r = run_cli("--teacher", f"openai:gpt-9@{srv.base_url}", "--tasks-file", str(tmp / "tasks.jsonl"),
                    "--out", str(out))
        assert r.returncode == 2 and "does not serve model 'gpt-9'" in r.stderr and "teacher" in r.stderr
        (tmp / "empty.jsonl").write_text("")
        r = run_cli("--teacher", f"openai:teacher@{srv.base_url}", "--tasks-file", str(tmp / "empty.jsonl"),
                    "--out", str(out))
        assert r.returncode == 2 and "no tasks" in r.stderr
        assert srv.requests == []
    assert not out.exists()


def test_distill_with_scripted_teacher_default(setup, tok):
    """The embedded default teacher (cluster's scripted expert) replays reference solutions for real."""
    tasks, tmp = setup
    out = tmp / "scripted.jsonl"
    r = run_cli("--tasks-file", str(tmp / "tasks.jsonl"), "--out", str(out), "rollout.sandbox.command_timeout_s=10")
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads(r.stdout[:r.stdout.rindex("}") + 1])
    assert stats["episodes"] == 4 and stats["episode_errors"] == 0 and stats["below_threshold"] == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    kept = {row["provenance"]["task"]["id"]: row for row in rows}
    assert set(kept) == {"t-count", "t-hello", "t-broken"}
    assert kept["t-count"]["provenance"]["teacher"]["kind"] == "scripted"
    obs = kept["t-count"]["trajectory"]["turns"][0]["observation"]
    assert "7 passed, 1 failed: test_edge" in obs      # the command really ran in the sandbox
    loaded = read_trajectories(out)
    assert len(loaded) == 3 and all(t.report and t.metadata["provenance"]["verdict"]["score"] >= 0.7 for t in loaded)
    # `terminus train trainer.sft.data=FILE` trains on exactly these (rollout.teacher.load_demos)
    demos, counts = load_demos(out, tok)
    assert counts == {"demos_total": 3, "demos_failed": 0}
    assert [d.token_ids for d in demos] == [t.token_ids for t in loaded] and demos[0].metadata["provenance"]


def test_sft_data_from_another_models_tokenizer_or_a_missing_file_is_a_user_error(tmp_path, tok):
    """Token ids beyond the student's vocabulary were tokenized for another model: refused with the fix;
    a missing trainer.sft.data stops `terminus train` before Ray starts (one line, exit 2)."""
    from core.errors import UserError
    from rollout.trajectory import Trajectory
    foreign = Trajectory(task_id="t1", messages=[], token_ids=[1, 150_000], response_mask=[0, 1],
                         logprobs=[0.0, 0.0], turns=[], report={"status": "success"}, finish_reason="report")
    path = tmp_path / "foreign.jsonl"
    path.write_text(json.dumps({"trajectory": foreign.to_dict(), "provenance": {}}) + "\n")
    with pytest.raises(UserError, match="beyond the student's vocabulary"):
        load_demos(path, tok)
    r = subprocess.run([TERMINUS, "train", "-c", "tiny_cpu", f"output_dir={tmp_path / 'run'}",
                        f"trainer.sft.data={tmp_path / 'missing.jsonl'}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "missing.jsonl" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_distill_embedded_default_on_generated_corpus(tmp_path):
    """The embedded default end to end: the generated corpus's train split (CI-sized, built into a
    fresh cache: its progress must not reach stdout), scripted teacher, rules judge."""
    out = tmp_path / "sft.jsonl"
    r = run_cli("--split", "train", "--limit", "2", "--out", str(out), "tasks.generated.train_variants=4",
                "tasks.generated.eval_variants=1", f"tasks.cache_dir={tmp_path / 'cache'}", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads(r.stdout[:r.stdout.rindex("}") + 1])
    assert stats["tasks"] == 2 and stats["episodes"] == 2 and stats["episode_errors"] == 0
    assert stats["kept"] >= 1 and len(read_trajectories(out)) == stats["kept"]
