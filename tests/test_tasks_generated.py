"""The generated task family: deterministic projects, names disjoint between train and held-out,
ground truth from real sandbox runs, every fact observable, and the reference solutions replayed
through the same episode path training uses score as exact reports."""
import asyncio
import copy
import re

import pytest

from rollout.teacher import ScriptedTeacher
from judge.rules import exact_facts
from rollout.config import RolloutConfig
from sandbox.config import SandboxConfig
from core.protocol import Observation, format_observation
from rollout.worker import run_requests
from tasks import load_tasks
from tasks.config import GeneratedConfig, TasksConfig
from tasks.generated import (FAMILIES, GeneratedTaskError, Spec, build_generated, check_observable, draft,
                             facts_from_output, held_out_name, specs)
from tasks.types import Fact
from evaluation.validate import validate_sample, validate_tasks

pytestmark = pytest.mark.timeout(300)
SMALL = GeneratedConfig(train_variants=16, eval_variants=5)
_IDENT = re.compile(r"\b[a-z]+(?:_[a-z]+)?\b")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    tasks = asyncio.run(build_generated(out, SMALL, SandboxConfig()))
    for t in tasks:   # as read_split resolves them
        t.repo_dir = str(out / t.repo_dir)
    return out, tasks


def test_the_same_seed_gives_byte_identical_projects_and_another_seed_another():
    for family in FAMILIES:
        a, b = draft(family, "7:train:3", False), draft(family, "7:train:3", False)
        assert a.files == b.files and a.request == b.request
        assert draft(family, "8:train:3", False).files != a.files


def test_held_out_projects_use_names_training_never_uses():
    train_words = {w for i in range(40) for f in FAMILIES
                   for w in _words(draft(f, f"0:train:{i}", False))}
    held_words = {w for i in range(40) for f in FAMILIES
                  for w in _words(draft(f, f"0:validation:{i}", True))}
    assert train_words and held_words and not train_words & held_words
    assert all(held_out_name(w) for w in held_words) and not any(held_out_name(w) for w in train_words)


def _words(d):
    """The generated words of a project (its files' names and identifiers made of syllables)."""
    names = set()
    for name, text in d.files.items():
        for w in (w.lower() for w in re.findall(r"[A-Z]?[a-z]+", name + "\n" + text)):   # camelCase split
            if len(w) >= 4 and re.fullmatch(r"(?:ka|lo|mi|ra|ven|tor|sel|dun|pri|mo|ba|zel|fin|gor|lu|pa|ne|sor|"
                                            r"tem|vi|qua|rix|bo|nal|ter|dra|ko|sim){2,3}", w):
                names.add(w)
    return names


def test_splits_families_and_kinds(corpus):
    _, tasks = corpus
    by_split = {s: [t for t in tasks if t.split == s] for s in ("train", "validation", "test")}
    assert [len(by_split[s]) for s in ("train", "validation", "test")] == [16, 5, 5]
    assert {t.ground_truth.observed["family"] for t in by_split["train"]} == set(SMALL.families)
    assert {t.ground_truth.observed["family"] for t in by_split["test"]} == {SMALL.held_out_family}
    assert SMALL.held_out_family not in {t.ground_truth.observed["family"] for t in by_split["train"] + by_split["validation"]}
    # ground truth by execution: outcomes vary (passing, failing tests, build errors) with real exit codes
    assert {t.ground_truth.exit_status for t in tasks} >= {0, 1, 2}
    assert any(f.kind == "failing_test" for t in tasks for f in t.ground_truth.facts)
    assert {t.category for t in tasks} >= {"run_tests", "build", "run_script"}


def test_every_fact_is_visible_in_what_the_reference_command_printed(corpus):
    _, tasks = corpus
    for t in tasks:
        out, code = t.ground_truth.observed["outputs"][0], t.ground_truth.observed["exit_codes"][0]
        seen = format_observation(Observation(code, out), turns_left=1)
        assert len(out.encode()) <= SMALL.observation_cap
        for f in t.ground_truth.facts:
            assert f.evidence and all(e in seen for e in f.evidence), (t.id, f)
            if f.kind == "failing_test":    # the runner's line naming the failing test is printed
                assert f.value.rsplit(" (", 1)[0] in out


def test_a_fact_the_agent_cannot_see_is_refused(corpus):
    _, tasks = corpus
    t = copy.deepcopy(next(t for t in tasks if t.ground_truth.exit_status != 0))
    seen = format_observation(Observation(t.ground_truth.exit_status, t.ground_truth.observed["outputs"][0]), 1)
    check_observable(t, seen)
    t.ground_truth.facts.append(Fact("cause", "mutated line 3", [r"line 3"], ["mutation: flipped"]))
    with pytest.raises(GeneratedTaskError, match="not observable"):
        check_observable(t, seen)


def test_facts_come_from_the_output_not_the_generator():
    d = draft("pyunit", "0:train:0", False)
    out = ("F.\n======\nFAIL: test_made_up (m.T.test_made_up)\n------\nAssertionError: 1 != 2\n\n------\n"
           "Ran 2 tests in 0.001s\n\nFAILED (failures=1)\n")
    facts = facts_from_output(d, out, 1)
    assert [f.value for f in facts] == ["FAIL: test_made_up (AssertionError)", "Ran 2 tests, FAILED (failures=1)",
                                        "exit status 1"]


def test_counts_are_stated_in_the_runners_words_and_either_wording_counts():
    """The reference quotes the runner's summary lines (which a model can copy: '2 of 4' is arithmetic it
    cannot do from the log); a report with the same numbers in other words states the fact too, one with
    the numbers of the errors alone ('failures=1, errors=1' says 2 failed, but not as '2') only in quotes."""
    d = draft("pyunit", "0:train:0", False)
    out = ("EF..\n======\nERROR: test_a (m.T.test_a)\n------\nTypeError: x\n\n======\nFAIL: test_b (m.T.test_b)\n"
           "------\nAssertionError: 1 != 2\n\n------\nRan 4 tests in 0.001s\n\nFAILED (failures=1, errors=1)\n")
    counts = next(f for f in facts_from_output(d, out, 1) if f.kind == "counts")
    assert counts.value == "Ran 4 tests, FAILED (failures=1, errors=1)"
    assert counts.evidence == ["Ran 4 tests", "FAILED (failures=1, errors=1)"]
    matches = [s for s in ("Ran 4 tests, FAILED (failures=1, errors=1).", "2 of 4 tests fail.", "4 tests ran, 2 failed.",
                           "Ran 4 tests; FAILED (failures=1)", "3 of 4 tests fail.", "Ran 4 tests.")
               if re.search(counts.patterns[0], s)]
    assert matches == ["Ran 4 tests, FAILED (failures=1, errors=1).", "2 of 4 tests fail.", "4 tests ran, 2 failed."]
    tap = "TAP version 13\nok 1 - a b\nok 2 - c d\n1..2\n# tests 2\n# suites 0\n# pass 2\n# fail 0\n"
    counts = next(f for f in facts_from_output(draft("jsnode", "0:train:0", False), tap, 0) if f.kind == "counts")
    assert counts.value == "# tests 2, # pass 2" and re.search(counts.patterns[0], "all 2 tests pass")


def test_reference_solutions_replayed_through_episodes_are_exact_reports(corpus, tok):
    """The validation the issue asks for (`terminus tasks validate`'s): each task's reference, played by
    the scripted teacher through the real episode loop and sandbox, exits as recorded, shows every
    fact's evidence, and is judged an exact report (every fact, no invented one)."""
    _, tasks = corpus
    cfg = SandboxConfig(output_limit_bytes=SMALL.observation_cap)
    checks = asyncio.run(validate_tasks(tasks, cfg, tok, max_turns=4))
    assert len(checks) == len(tasks) and all(c.ok and not c.unverified for c in checks), \
        [(c.task_id, c.problems) for c in checks if not c.ok]


def test_exact_facts_rejects_a_missing_fact_and_an_invented_test(corpus, tok):
    _, tasks = corpus
    task = next(t for t in tasks if any(f.kind == "failing_test" for f in t.ground_truth.facts))
    cfg = RolloutConfig()
    [[traj]] = asyncio.run(run_requests([(task, 1)], ScriptedTeacher([task], tok, 4), tok, cfg))
    assert exact_facts(task, traj)
    traj.report = dict(traj.report, details=traj.report["details"] + "; test_never_ran fails too")
    assert not exact_facts(task, traj)
    traj.report = dict(traj.report, summary="it fails", details="")
    assert not exact_facts(task, traj)


def test_a_terse_teacher_is_right_but_incomplete_and_the_judge_pays_for_the_details(corpus, tok):
    """trainer.sft.teacher.terse_fraction: the scripted teacher gives a seeded share of the tasks a report
    with the outcome and exit status only. That report is faithful (no flag, the right status) but not
    exact, and the rules judge scores it below the full reference: the room GRPO has above its teacher."""
    from judge.config import JudgeConfig
    from judge.rubric import reward
    from judge.rules import judge_rules
    from rollout.teacher import is_flawed

    _, tasks = corpus
    task = next(t for t in tasks if len(t.ground_truth.facts) >= 3 and t.ground_truth.exit_status != 0)
    jc = JudgeConfig()
    rewards = {}
    for frac in (0.0, 1.0):
        [[traj]] = asyncio.run(run_requests([(task, 1)], ScriptedTeacher([task], tok, 4, terse_fraction=frac), tok,
                                            RolloutConfig()))
        v = judge_rules(task, traj)
        assert not any(f.flag for f in v.failures.values()), v.failures
        rewards[frac] = reward({k: d.score for k, d in v.dimensions.items()}, {}, jc.weights, jc.penalties)
        assert exact_facts(task, traj) == (frac == 0.0)
    assert traj.report["details"] == f"Exit status {task.ground_truth.exit_status}."
    assert rewards[1.0] < rewards[0.0] - 0.2, rewards
    # the choice is a seeded share of the tasks, the same in every process, and the same for tasks the
    # teacher cannot tell apart (one request, one report: otherwise it would refuse to guess between them)
    many = [copy.copy(task) for _ in range(2000)]
    for i, t in enumerate(many):
        t.id, t.reference = f"t{i}", copy.copy(task.reference)
        t.reference.report = f"{task.reference.report} {i}"
    chosen = [t.id for t in many if is_flawed(t, "terse", 0.5, seed=3)]
    assert 900 < len(chosen) < 1100 and chosen == [t.id for t in many if is_flawed(t, "terse", 0.5, seed=3)]
    assert chosen != [t.id for t in many if is_flawed(t, "terse", 0.5, seed=4)]
    assert not any(is_flawed(t, "terse", 0.0, seed=3) for t in many) and all(is_flawed(t, "terse", 1.0, seed=3) for t in many)
    twin = copy.copy(task)
    twin.id = "another-id"
    assert len({is_flawed(t, "terse", 0.5, seed=s) for s in range(20) for t in (task, twin)}) == 2   # both, by seed
    assert all(is_flawed(task, "terse", 0.5, seed=s) == is_flawed(twin, "terse", 0.5, seed=s) for s in range(20))


def test_a_misstating_teacher_misreads_one_number_and_the_judge_catches_it(corpus, tok):
    """trainer.sft.teacher.misstate_fraction: the scripted teacher misreads one number of the output in a
    seeded share of its reports (a count, a value, a line: n -> n + 1). Each such report is wrong by the
    checks that judge the policy (not exact, a lower reward), its exit status stays right, and a task
    whose report has no checked number keeps the right report."""
    from judge.config import JudgeConfig
    from judge.rubric import reward
    from judge.rules import judge_rules
    from rollout.teacher import misstated_report

    _, tasks = corpus
    jc = JudgeConfig()
    misstatable = [t for t in tasks if misstated_report(t)]
    kept = [t for t in tasks if not misstated_report(t)]
    assert {t.id.split("-")[0] for t in misstatable} >= {"cmake", "jsnode", "pyunit", "shcheck"} and kept
    for task in misstatable[::4] + kept[:2]:
        rewards = {}
        for frac in (0.0, 1.0):
            teacher = ScriptedTeacher([task], tok, 4, misstate_fraction=frac)
            [[traj]] = asyncio.run(run_requests([(task, 1)], teacher, tok, RolloutConfig()))
            v = judge_rules(task, traj)
            rewards[frac] = reward({k: d.score for k, d in v.dimensions.items()},
                                   {k: f.flag for k, f in v.failures.items()}, jc.weights, jc.penalties)
            wrong = frac == 1.0 and task in misstatable
            assert teacher.flaw(task) == ("misstated" if wrong else None)
            assert exact_facts(task, traj) == (not wrong), (task.id, traj.report)
            assert traj.report["status"] in ("success",) * (task.ground_truth.exit_status == 0) + ("failure", "error")
            assert re.search(rf"Exit status {task.ground_truth.exit_status}\.", traj.report["details"])
        if task in misstatable:
            assert rewards[1.0] < rewards[0.0], (task.id, rewards)   # below the right report (docs/rubric.md)
        else:
            assert rewards[1.0] == rewards[0.0]


def test_a_retrying_teacher_shows_a_rejected_report_and_its_recovery(corpus, tok):
    """trainer.sft.teacher.retry_fraction: the scripted teacher's first report is malformed, the episode
    loop rejects it with a format error, and the next turn is the right report. SFT trains on the
    commands and the retry, not on the rejected report; a task whose commands fill the turns keeps one report."""
    from rl.group import sft_samples

    _, tasks = corpus
    task = next(t for t in tasks if len(t.reference.commands) == 1 and t.ground_truth.exit_status != 0)
    [[plain]] = asyncio.run(run_requests([(task, 1)], ScriptedTeacher([task], tok, 4), tok, RolloutConfig()))
    teacher = ScriptedTeacher([task], tok, 4, retry_fraction=1.0)
    [[traj]] = asyncio.run(run_requests([(task, 1)], teacher, tok, RolloutConfig()))
    assert [u.action for u in plain.turns] == ["command", "report"]
    assert [u.action for u in traj.turns] == ["command", "format_error", "report"], traj.turns
    assert "without <summary>" in traj.turns[1].format_error, traj.turns[1].format_error
    assert traj.report == plain.report and exact_facts(task, traj)      # the retry is the teacher's report
    command, rejected, report = (u.num_generated_tokens for u in traj.turns)
    assert sum(sft_samples([traj])[0]["mask"]) == command + report == sum(plain.response_mask)
    assert sum(traj.response_mask) == command + rejected + report
    assert not ScriptedTeacher([task], tok, 2, retry_fraction=1.0).retries(task)   # no turn to spare


def test_config_errors_name_the_key():
    with pytest.raises(GeneratedTaskError, match="held_out_family"):
        specs(GeneratedConfig(families=["pyunit", "pyscript"]))
    with pytest.raises(GeneratedTaskError, match="unknown or no families"):
        specs(GeneratedConfig(families=["cobol"]))
    assert [s.id for s in specs(GeneratedConfig(train_variants=2, eval_variants=1))] == [
        "pyunit-train-0000", "cmake-train-0001", "pyunit-validation-0000", "pyscript-test-0000"]
    assert Spec("pyunit", 0, "train", 0).draft().files == Spec("pyunit", 0, "train", 0).draft().files


def test_load_tasks_builds_the_generated_corpus_once_and_reuses_it(tmp_path, capsys):
    cfg = TasksConfig(corpus="generated", cache_dir=str(tmp_path),
                      generated=GeneratedConfig(train_variants=4, eval_variants=1))
    train = load_tasks(cfg, "train", validate=validate_sample)
    assert len(train) == 4 and "building the generated corpus" in capsys.readouterr().err   # stdout stays clean
    assert [t.id for t in load_tasks(cfg, "train", validate=validate_sample)] == [t.id for t in train]
    assert "building" not in capsys.readouterr().err            # cached by its settings
    cfg.generated.seed = 1
    assert load_tasks(cfg, "train", validate=validate_sample)[0].request != train[0].request or \
        load_tasks(cfg, "train", validate=validate_sample)[0].ground_truth.observed != train[0].ground_truth.observed
