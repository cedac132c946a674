"""The paper's path as one `terminus train` job on CPU: a real `vllm serve` of the tiny model plays the
frontier teacher (trainer.sft.teacher.kind=openai) and the LLM judge (judge.backend=openai); the job
runs teacher -> SFT -> GRPO with that judge -> held-out evaluation; the exported model is served back
by `vllm serve` and answers through the openai SDK. And a dead endpoint stops the job before it
starts anything, with one line and an untouched run directory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.net import free_port
from core.testing.vllm_server import serve_vllm

TERMINUS = [sys.executable, "-m", "terminus.cli"]


def train(out: Path, *over: str, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", VLLM_LOGGING_LEVEL="WARNING", VLLM_CPU_KVCACHE_SPACE="1")
    return subprocess.run([*TERMINUS, "train", "--config", "tiny_cpu", f"output_dir={out}", *over],
                          capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def endpoints(url: str, model: str = "tiny") -> list[str]:
    return ["trainer.sft.teacher.kind=openai", f"trainer.sft.teacher.base_url={url}",
            f"trainer.sft.teacher.model={model}", "trainer.sft.teacher.max_retries=0",
            "judge.backend=openai", f"judge.base_url={url}", f"judge.model_name={model}", "judge.max_retries=0"]


@pytest.mark.timeout(120)
def test_dead_teacher_or_judge_endpoint_stops_the_job_before_it_starts(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: an earlier run\n")   # what a resumable run dir holds
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    dead = f"http://127.0.0.1:{free_port()}/v1"                   # nothing listens there
    r = train(run, *endpoints(dead), timeout=90)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("terminus: error:")]
    assert len(errors) == 1 and "trainer.sft.teacher" in errors[0] and dead in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "ray" not in r.stdout.lower()   # before Ray or anything else
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    # the teacher comes from a distilled file (trainer.sft.data): the judge's endpoint is still checked
    data = tmp_path / "sft.jsonl"
    data.write_text("")
    r = train(run, *endpoints(dead), f"trainer.sft.data={data}", timeout=90)
    assert r.returncode == 2 and "terminus: error: judge:" in r.stderr and dead in r.stderr, r.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# CI-sized: 8 generated train projects (4 demonstrated by the teacher, 4 for GRPO), 2 held-out ones,
# 2-turn episodes; one GRPO step without dynamic sampling (a tiny judge may leave every group unjudged).
PAPER = ["tasks.generated.train_variants=8", "tasks.generated.eval_variants=2", "trainer.sft.demo_fraction=0.5",
         "rollout.episode.max_turns=2", "trainer.sft.epochs=1",
         "trainer.grpo.steps=1", "trainer.grpo.tasks_per_step=2", "trainer.grpo.rollouts_per_task=2",
         "trainer.grpo.dynamic_sampling_max_extra=0", "trainer.grpo.max_staleness=0",
         "trainer.eval.samples_per_task=1", "trainer.eval.repeats=1", "trainer.eval.max_tasks=2",
         "trainer.eval.transfer_split=null", "trainer.checkpoint.every=0",
         # keep every trajectory the judge could score (rewards are >= -1.5): the tiny teacher is no expert
         "trainer.sft.teacher.min_reward=-2", "trainer.sft.teacher.temperature=1.0",
         # the random tiny teacher's turns held to the protocol's grammar by the server, so it writes reports
         "trainer.sft.teacher.constrain=protocol"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_paper_path_teacher_sft_grpo_eval_with_vllm_serve_as_teacher_and_judge(tmp_path, tok):
    from openai import OpenAI

    from core.model import resolve_model_path
    from rollout.io import read_trajectories

    run = tmp_path / "run"
    with serve_vllm(str(resolve_model_path("tiny")), "tiny", tmp_path / "serve.log") as url:
        r = train(run, *endpoints(url), *PAPER, timeout=700)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    summary = json.loads((run / "summary.json").read_text())

    # 1. the teacher played every demonstrated task through the server, in sandboxes; its episodes were
    #    judged by the server and the counts add up; what it kept is on disk as `terminus distill` writes it
    teacher = summary["teacher"]
    demonstrated = summary["tasks"]["demonstrated"]
    assert teacher["episodes"] == demonstrated == 4 and teacher["below_threshold"] == 0
    assert teacher["kept"] + teacher["unjudgeable"] + teacher["episode_errors"] + teacher["duplicates"] == 4
    assert teacher["episode_errors"] == 0, out[-3000:]          # the endpoint answered every turn
    assert f"[sft] teacher openai:tiny: 4 episodes, kept {teacher['kept']}" in out
    progress = [json.loads(x) for x in (run / "teacher_demos.jsonl.progress.jsonl").read_text().splitlines()]
    assert len(progress) == 4 and sum(p["episodes"] for p in progress) == 4
    kept = read_trajectories(run / "teacher_demos.jsonl")
    assert len(kept) == teacher["kept"]
    for t in kept:   # provenance, and the student's tokens (the chat text re-tokenized, token-exact)
        prov = t.metadata["provenance"]
        assert prov["teacher"] == {"label": "openai:tiny", "kind": "openai", "model": "tiny", "base_url": url}
        assert prov["judge"] == "openai:tiny" and prov["verdict"]["score"] >= -2
        assert tok.decode(t.token_ids, skip_special_tokens=False) == tok.apply_chat_template(t.messages, tokenize=False)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["teacher/kept"] for m in metrics if "teacher/kept" in m] == [teacher["kept"]]   # W&B too
    with_report = [t for t in kept if t.report]   # SFT imitates only episodes that end in a report
    assert teacher["kept_total"] == len(with_report) and teacher["kept_without_report"] == len(kept) - len(with_report)
    if with_report:
        assert summary["sft"]["demos"] == len(with_report) and summary["sft"]["steps"] >= 1
    else:   # the random tiny teacher rarely writes a well-formed report: said plainly, no SFT stage on nothing
        assert summary["sft"]["skipped"] and summary["sft"]["demos"] == 0
        [skipped] = [line for line in out.splitlines()
                     if line.startswith("[sft] skipped: the teacher kept no trajectory with a report")]
        if teacher["unjudgeable"] == 4:   # the server's replies were no verdicts: the reason is named
            assert "unjudgeable: {" in skipped, skipped

    # 2. GRPO's rollouts were judged by the server: every sampled row names the LLM judge, and a row
    #    without a reward says why (the server's reply was not a verdict), never an endpoint failure
    [step] = summary["grpo"]
    assert step["judged"] + step["judge_masked"] == 4
    rows = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert rows and all(row["verdict"].startswith("openai:tiny") for row in rows)
    assert all(row["reward"] is not None or "malformed_json" in row["verdict"] for row in rows), rows
    assert not [k for k in summary["judge"] if "endpoint_error" in k], summary["judge"]

    # 3. held-out evaluation with the same judge, before and after training
    assert {"untrained", "grpo"} <= set(summary["evals"])
    for t in read_trajectories(run / "eval_grpo.jsonl"):
        assert t.verdict["judge"] == "openai:tiny"

    # 4. the trained model, exported, is served back by `vllm serve` and answers through the openai SDK
    hf = summary["final_hf"]
    with serve_vllm(hf, "student", tmp_path / "serve_student.log") as student_url:
        client = OpenAI(base_url=student_url, api_key="unused")
        assert [m.id for m in client.models.list().data] == ["student"]
        reply = client.chat.completions.create(model="student", max_tokens=8, temperature=0,
                                               messages=[{"role": "user", "content": "List the files."}])
    assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1


def test_a_run_resumed_past_sft_does_not_need_its_teacher(tmp_path):
    """The teacher's endpoint is checked only when the job will play it: not for a run resumed in GRPO."""
    from evaluation.distill import teacher_will_play
    from terminus.config import load_config

    def cfg(*over):
        return load_config("tiny_cpu", [f"output_dir={tmp_path}", *endpoints("http://127.0.0.1:9/v1"), *over])

    def checkpoint(step, stage):
        d = tmp_path / "checkpoints" / f"step_{step:06d}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"stage": stage}))
        (d / "COMPLETE").write_text("")

    assert teacher_will_play(cfg()) and not teacher_will_play(cfg("trainer.stage=grpo"))
    assert not teacher_will_play(cfg("trainer.sft.teacher.kind=scripted"))
    checkpoint(4, "sft")                  # killed during SFT: the teacher's file is resumed, it plays again
    assert teacher_will_play(cfg())
    checkpoint(6, "grpo")                 # past SFT
    assert not teacher_will_play(cfg()) and teacher_will_play(cfg("trainer.checkpoint.resume=never"))
