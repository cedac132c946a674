"""The scripted expert teacher drives the real episode loop: its reference commands run in a real
bwrap sandbox and the trajectory is tokenized like any model's (the SFT data source)."""
import asyncio

import pytest

from rollout.teacher import ScriptedTeacher, choose_demo_tasks, report_text
from rollout.config import RolloutConfig
from rollout.worker import run_requests
from tasks.types import GroundTruth, ReferenceSolution, Task

pytestmark = pytest.mark.timeout(120)


def make_task(tmp_path, commands, tid="t1"):
    repo = tmp_path / tid
    repo.mkdir()
    (repo / "a.txt").write_text("hello from the repo\n")
    return Task(id=tid, language="python", category="run_script", project="p", repo_dir=str(repo),
                request=f"Print a.txt ({tid}) and tell me what it says.",
                reference=ReferenceSolution(commands=commands,
                                            report="<status>success</status><summary>it says hello</summary>"
                                                   "<details>exit 0</details>"))


def run(tasks, tok, max_turns=4, n=1):
    cfg = RolloutConfig()
    cfg.episode.max_turns = max_turns
    cfg.sandbox.command_timeout_s = 10
    teacher = ScriptedTeacher(tasks, tok, max_turns=max_turns)
    return asyncio.run(run_requests([(t, n) for t in tasks], teacher, tok, cfg))


def test_teacher_replays_reference_in_sandbox(tmp_path, tok):
    a = make_task(tmp_path, ["cat a.txt", "wc -l a.txt"], "a")
    b = make_task(tmp_path, ["ls"], "b")
    groups = run([a, b], tok, n=2)
    assert [len(g) for g in groups] == [2, 2]
    tr = groups[0][0]
    assert tr.error is None and tr.finish_reason == "report"
    assert [t.command for t in tr.turns] == ["cat a.txt", "wc -l a.txt", None]
    assert "hello from the repo" in tr.turns[0].observation      # really ran in the sandbox
    assert tr.turns[1].exit_code == 0 and "1 a.txt" in tr.turns[1].observation
    assert tr.report["summary"] == "it says hello"
    assert [t.command for t in groups[1][1].turns] == ["ls", None]


def test_teacher_keeps_the_report_within_the_turn_cap(tmp_path, tok):
    t = make_task(tmp_path, ["true", "true", "true", "true"])
    tr = run([t], tok, max_turns=3)[0][0]
    assert [x.action for x in tr.turns] == ["command", "command", "report"]


def test_teacher_marks_unknown_request_as_failed(tmp_path, tok):
    known = make_task(tmp_path, ["ls"], "k")
    unknown = Task(id="u", language="python", category="run_script", project="p", repo_dir=known.repo_dir,
                   request="Something nobody scripted.")
    cfg = RolloutConfig()
    teacher = ScriptedTeacher([known], tok, max_turns=4)
    tr = asyncio.run(run_requests([(unknown, 1)], teacher, tok, cfg))[0][0]
    assert tr.error and "no reference solution" in tr.error


def test_teacher_tells_variants_with_one_request_apart_by_their_outputs(tmp_path, tok):
    """Two broken copies of one project share a request; each demo must follow its own task's
    second command and report, read off what the first command printed (not the last task listed)."""
    variants = []
    for tid, fault, code in (("v-name", "NameError: nme", 1), ("v-syntax", "SyntaxError: line 3", 2)):
        repo = tmp_path / tid
        repo.mkdir()
        (repo / "run.sh").write_text(f"echo 'Traceback'; echo '{fault}'; exit {code}\n")
        variants.append(Task(
            id=tid, language="python", category="diagnose", project="p", repo_dir=str(repo),
            request="Run run.sh and tell me why it fails.",
            ground_truth=GroundTruth(exit_status=code, observed={"exit_codes": [code, 0],
                                                                 "outputs": [f"Traceback\n{fault}", "x"]}),
            reference=ReferenceSolution(commands=["sh run.sh", f"echo look at {tid}"],
                                        report=f"<status>failure</status><summary>{fault}</summary>")))
    for order in (variants, variants[::-1]):
        groups = run(order, tok)
        for task, group in zip(order, groups):
            tr = group[0]
            assert tr.error is None, tr.error
            assert [t.command for t in tr.turns] == ["sh run.sh", f"echo look at {task.id}", None]
            assert tr.report["summary"] == task.reference.report.split("<summary>")[1].split("<")[0]


def test_teacher_reads_a_long_runs_end_and_ignores_its_timings():
    """Two faults of one project: the same long test log, its failures and totals at the end, and
    timings that differ from run to run (found by `terminus tasks validate` on a real corpus, where
    the teacher compared only the first 4,000 characters and followed the wrong fault)."""
    from core.protocol import Observation, format_observation

    head = "".join(f"tests/test_x.py::test_{i} PASSED\n" for i in range(400))
    def log(failing: str, secs: str) -> str:
        return f"{head}FAILED tests/test_x.py::{failing}\n=== 1 failed, 400 passed in {secs}s ==="
    tasks = [Task(id=f"f-{name}", language="python", category="run_tests", project="p", repo_dir="",
                  request="Run the tests.", reference=ReferenceSolution(["pytest -v"], f"<status>failure</status>"
                                                                        f"<summary>{name} fails</summary>"),
                  ground_truth=GroundTruth(exit_status=1, observed={"exit_codes": [1],
                                                                    "outputs": [log(name, secs)]}))
             for name, secs in (("test_alpha", "3.21"), ("test_beta", "3.58"))]
    teacher = ScriptedTeacher(tasks, tokenizer=None, max_turns=4)
    for name in ("test_alpha", "test_beta"):
        seen = format_observation(Observation(1, log(name, "9.99")), turns_left=3)   # another run's timing
        messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "Run the tests."},
                    {"role": "assistant", "content": "<command>pytest -v</command>"}, {"role": "user", "content": seen}]
        assert f"{name} fails" in teacher.turn_text(messages)


def test_teacher_refuses_to_guess_between_indistinguishable_variants(tmp_path, tok):
    a, b = make_task(tmp_path, ["cat a.txt", "true"], "a"), make_task(tmp_path, ["cat a.txt", "false"], "b")
    b.request = a.request
    tr = run([a, b], tok)[0][0]
    assert tr.error and "fit tasks" in tr.error


def test_report_text_forms():
    assert report_text("<report><status>x</status></report>") == "<report><status>x</status></report>"
    assert report_text("<status>failure</status><summary>s</summary>").startswith("<report><status>failure")
    assert "<summary>plain</summary>" in report_text("plain")


def test_choose_demo_tasks_takes_a_stable_share_of_every_project():
    from types import SimpleNamespace as T
    tasks = [T(id=f"{p}-{i}", project=p) for p, n in (("a", 4), ("b", 3), ("c", 1)) for i in range(n)]
    shown, rest = choose_demo_tasks(tasks, 0.5, seed=0)
    count = lambda ts, p: sum(t.project == p for t in ts)
    assert [count(shown, p) for p in "abc"] == [2, 2, 1]       # ceil(0.5 * n): every project keeps one
    assert sorted(t.id for t in shown + rest) == sorted(t.id for t in tasks) and not {t.id for t in shown} & {t.id for t in rest}
    assert [t.id for t in shown] == [t.id for t in choose_demo_tasks(tasks, 0.5, seed=0)[0]]   # stable
    picks = {tuple(t.id for t in choose_demo_tasks(tasks, 0.5, seed=s)[0]) for s in range(8)}
    assert len(picks) > 1                                        # the seed chooses
    assert choose_demo_tasks(tasks, 1.0, seed=0) == (tasks, [])
