"""The built-in corpus: builds from templates, ground truth reproduced in real sandboxes, clear errors."""
import asyncio
import json
import re

import pytest

from sandbox.config import SandboxConfig
from sandbox import open_sandbox
from tasks import CorpusError, load_tasks
from tasks.builtin import Mutation, TemplateError, apply_mutation
from tasks.corpus import builtin_dir
from tasks.groundtruth import build_facts, tap_facts, unittest_facts


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("taskcache"))


@pytest.fixture(scope="module")
def corpus(cache):
    return {s: load_tasks("builtin", s, cache_dir=cache) for s in ("train", "validation", "test")}


def test_builtin_builds_loads_and_splits_by_project(corpus, cache):
    all_tasks = [t for ts in corpus.values() for t in ts]
    assert len(all_tasks) >= 30
    assert len({t.id for t in all_tasks}) == len(all_tasks)
    projects = {s: {t.project for t in ts} for s, ts in corpus.items()}
    assert not projects["train"] & projects["validation"]
    assert not projects["train"] & projects["test"]
    assert not projects["validation"] & projects["test"]
    assert {t.category for t in all_tasks} >= {"run_tests", "build", "run_script", "lint", "diagnose"}
    assert {t.language for t in all_tasks} >= {"python", "c", "javascript", "shell"}
    summary = json.loads((builtin_dir(cache) / "corpus.json").read_text())
    assert summary["tasks"] == len(all_tasks)
    for t in all_tasks:
        assert t.ground_truth.facts and t.reference and t.reference.commands
        for f in t.ground_truth.facts:   # the ideal report states every fact
            assert all(re.search(p, t.reference.report, re.I | re.M) for p in f.patterns), (t.id, f)
    # faults make some tasks fail, others pass
    codes = [t.ground_truth.exit_status for t in all_tasks]
    assert 0 in codes and any(c != 0 for c in codes)


def test_second_load_reuses_the_cache(corpus, cache):
    marker = builtin_dir(cache) / "COMPLETE"
    before = marker.stat().st_mtime_ns
    again = load_tasks("builtin", "train", cache_dir=cache)
    assert [t.id for t in again] == [t.id for t in corpus["train"]]
    assert marker.stat().st_mtime_ns == before


def test_reference_commands_reproduce_the_ground_truth_in_a_sandbox(corpus):
    one_per_project = {}
    for t in [t for ts in corpus.values() for t in ts]:
        if t.ground_truth.exit_status != 0:
            one_per_project.setdefault(t.project, t)

    async def rerun(task):
        async with await open_sandbox(SandboxConfig(), task.repo_dir) as sb:
            return await sb.run(task.reference.commands[0], timeout_s=60)

    for task in one_per_project.values():
        r = asyncio.run(rerun(task))
        assert r.exit_code == task.ground_truth.exit_status, task.id
        observed = r.output
        for f in task.ground_truth.facts:
            if f.kind in ("failing_test", "error_message"):
                # the fact's key names (test name, error type) are in what really ran
                assert any(re.search(p, observed, re.I | re.M) for p in f.patterns), (task.id, f.value)


def test_mutation_applies_once_and_rejects_ambiguity(tmp_path):
    (tmp_path / "m.py").write_text("a = 1\nif x > y:\n    pass\n")
    line = apply_mutation(tmp_path, Mutation("flip", "m.py", "x > y", "x < y"))
    assert line == 2 and "x < y" in (tmp_path / "m.py").read_text()
    with pytest.raises(TemplateError, match="occurs 0 times"):
        apply_mutation(tmp_path, Mutation("again", "m.py", "x > y", "x < y"))
    with pytest.raises(TemplateError, match="not in the template"):
        apply_mutation(tmp_path, Mutation("gone", "nope.py"))


def test_load_errors_name_the_problem(tmp_path, corpus):
    with pytest.raises(CorpusError, match="does not exist"):
        load_tasks(str(tmp_path / "missing"), "train")
    (tmp_path / "partial").mkdir()
    with pytest.raises(CorpusError, match="incomplete"):
        load_tasks(str(tmp_path / "partial"), "train")
    (tmp_path / "partial" / "COMPLETE").write_text("")
    (tmp_path / "partial" / "train.jsonl").write_text("")
    with pytest.raises(CorpusError, match="empty"):
        load_tasks(str(tmp_path / "partial"), "train")
    with pytest.raises(CorpusError, match="unknown split"):
        load_tasks("builtin", "dev")


def test_parsers_on_hand_written_output():
    out = ("test_a (t.T.test_a) ... ok\ntest_b (t.T.test_b) ... FAIL\n\n"
           "======================================================================\n"
           "FAIL: test_b (t.T.test_b)\n----------------------------------------------------------------------\n"
           "Traceback (most recent call last):\n  File \"/work/repo/t.py\", line 9, in test_b\n"
           "AssertionError: 1 != 2\n\n----------------------------------------------------------------------\n"
           "Ran 2 tests in 0.001s\n\nFAILED (failures=1)\n")
    facts, observed = unittest_facts(out)
    assert observed["tests"] == {"test_a": "ok", "test_b": "FAIL"}
    assert facts[0].value == "test_b fails with AssertionError"
    assert facts[-1].value == "1 of 2 tests fail"
    tap = "not ok 1 - parses dates\n  name: 'TypeError'\nok 2 - adds\n# tests 2\n# pass 1\n# fail 1\n"
    facts, _ = tap_facts(tap)
    assert facts[0].value == "'parses dates' fails with TypeError"
    gcc = "cc -o x x.c\nx.c:12:3: error: 'foo' undeclared (first use in this function)\nmake: *** [x] Error 1\n"
    facts = build_facts(gcc)
    assert [f.value for f in facts] == ["'foo' undeclared (first use in this function)", "x.c:12"]
    assert re.search(facts[1].patterns[0], "the error is in x.c line 12")
