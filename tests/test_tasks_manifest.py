"""Manifest validation and project checks: bad entries reported with reasons, a flaky test caught."""
import asyncio
import json
import re
import subprocess

from sandbox.config import SandboxConfig
from tasks.manifest import Entry, check_project, load_manifest, split_of

GOOD = {"name": "six", "ecosystem": "pypi", "version": "1.16.0", "language": "python",
        "test_command": "python3 -m unittest -v"}


def test_bad_manifest_entries_are_reported_not_dropped(tmp_path):
    lines = [json.dumps(GOOD), "{not json", json.dumps({**GOOD, "name": "x", "version": "latest"}),
             json.dumps({**GOOD, "name": "y", "ecosystem": "maven"}), json.dumps({"name": "z"}),
             json.dumps(GOOD), json.dumps({**GOOD, "name": "w", "colour": "red"}), "# a comment", ""]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines))
    entries, problems = load_manifest(path)
    assert [e.name for e in entries] == ["six"]
    reasons = {p.line: p.reason for p in problems}
    assert set(reasons) == {2, 3, 4, 5, 6, 7}
    assert "not valid JSON" in reasons[2] and "exact version" in reasons[3]
    assert "unknown ecosystem" in reasons[4] and "missing" in reasons[5]
    assert "duplicate" in reasons[6] and "colour" in reasons[7]


def test_committed_manifest_is_valid():
    from pathlib import Path
    import tasks
    entries, problems = load_manifest(Path(tasks.__file__).parent / "manifests" / "default.jsonl")
    assert not problems, problems
    assert len(entries) >= 7
    assert split_of("six") == split_of("six") and {split_of(e.name) for e in entries} <= {"train", "validation", "test"}


def test_paper_scale_manifest_is_valid_and_spans_the_papers_languages():
    from collections import Counter
    from pathlib import Path

    import tasks
    entries, problems = load_manifest(Path(tasks.__file__).parent / "manifests" / "paper.jsonl")
    assert not problems, problems[:3]
    by_language = Counter(e.language for e in entries)
    assert len(entries) >= 1200 and {"python", "javascript", "typescript", "java", "c"} <= set(by_language)
    assert len({(e.ecosystem, e.name) for e in entries}) == len(entries)


def test_the_builder_reads_what_a_project_declares(tmp_path):
    """test_command auto: the TAP-speaking runner from package.json; a Python project's test extras."""
    import pytest

    from tasks.real import resolve_entry
    (tmp_path / "package.json").write_text('{"scripts": {"test": "tape test/*.js"}, "devDependencies": {"tape": "5"}}')
    js = resolve_entry(Entry("a", "npm", "1.0.0", "javascript", "auto"), tmp_path)
    assert js.test_command == "node_modules/.bin/tape 'test/**/*.js'" and js.runner == "tap"
    (tmp_path / "package.json").write_text('{"scripts": {"test": "xo && ava"}, "devDependencies": {"xo": "1", "ava": "6", '
                                           '"tape": "5"}}')   # the runner the script names wins
    assert resolve_entry(Entry("a", "npm", "1.0.0", "javascript", "auto"), tmp_path).test_command == \
        "node_modules/.bin/ava --tap"
    # mocha keeps the script's files and loaders, its reporter gives way to TAP
    (tmp_path / "package.json").write_text('{"scripts": {"test": "c8 -r lcov mocha -R spec -r ts-node/register '
                                           '\'test/**/*.ts\' && eslint ."}, "devDependencies": {"mocha": "10"}}')
    assert resolve_entry(Entry("a", "npm", "1.0.0", "javascript", "auto"), tmp_path).test_command == \
        "node_modules/.bin/mocha --reporter tap -r ts-node/register 'test/**/*.ts'"
    # a TypeScript project's build step: none when the tests load TypeScript themselves (ts-node)...
    assert resolve_entry(Entry("a", "npm", "1.0.0", "typescript", "auto"), tmp_path).setup == ()
    # ...else its build script; tsc alone may end in status 2 (type errors, JavaScript emitted)
    (tmp_path / "package.json").write_text('{"scripts": {"build": "rollup -c && tsc", "prepare": "tsc", "test": '
                                           '"mocha --reporter=dot dist/test/*.js"}, "devDependencies": {"mocha": "10"}}')
    ts = resolve_entry(Entry("a", "npm", "1.0.0", "typescript", "auto"), tmp_path)
    assert ts.test_command == "node_modules/.bin/mocha --reporter tap dist/test/*.js" and ts.setup == ("npm run build",)
    (tmp_path / "package.json").write_text('{"scripts": {"prepare": "tsc -p .", "test": "mocha test"}, '
                                           '"devDependencies": {"mocha": "10"}}')
    assert resolve_entry(Entry("a", "npm", "1.0.0", "typescript", "auto"), tmp_path).setup == \
        ("npm run prepare || [ $? -eq 2 ]",)
    assert resolve_entry(Entry("a", "npm", "1.0.0", "javascript", "auto"), tmp_path).setup == ()   # JavaScript: none
    (tmp_path / "package.json").write_text('{"scripts": {"test": "jest"}, "devDependencies": {"jest": "29"}}')
    with pytest.raises(ValueError, match="no runner that prints TAP"):
        resolve_entry(Entry("a", "npm", "1.0.0", "javascript", "auto"), tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "p"\ndependencies = ["requests>=2", "PyYAML"]\n'
                                             '[project.optional-dependencies]\n'
                                             'test = ["hypothesis>=6", "pytest-mock; python_version>\'3\'", "p[extra]"]\n'
                                             '[dependency-groups]\ntests = ["pretend", {include-group = "x"}]\n')
    (tmp_path / "setup.cfg").write_text("[options.extras_require]\ntesting =\n    freezegun\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "requirements.txt").write_text("# pins\n-r ../base.txt\ntomli_w==1.0.0\npytest>=7\n")
    py = resolve_entry(Entry("p", "pypi", "1.0", "python", "python3 -m pytest"), tmp_path)
    # runtime dependencies (the tests import the package), test extras and groups, requirement files;
    # not the project itself, not pytest (every venv has it), no environment markers
    assert py.test_deps == ("PyYAML", "freezegun", "hypothesis>=6", "pretend", "pytest-mock", "requests>=2",
                            "tomli_w==1.0.0")
    pinned = Entry("p", "pypi", "1.0", "python", "python3 -m pytest", test_deps=("pyyaml==6.0.1",))
    assert resolve_entry(pinned, tmp_path).test_deps[0] == "pyyaml==6.0.1"   # the manifest's pin wins
    assert "PyYAML" not in resolve_entry(pinned, tmp_path).test_deps


def test_setup_py_requirements_with_quoted_markers_are_read_whole(tmp_path):
    """loguru's setup.py quotes inside its markers ("colorama>=0.3.4 ; sys_platform=='win32'"): its
    test dependencies were read as colorama, "3.7" and "win32" (the markers' values as packages)."""
    from tasks.real import declared_dependencies
    (tmp_path / "setup.py").write_text(
        "setup(\n    name='loguru',\n    install_requires=[\n"
        "        \"colorama>=0.3.4 ; sys_platform=='win32'\",\n"
        "        \"aiocontextvars>=0.2.0 ; python_version<'3.7'\",\n"
        "        'win32-setctime>=1.0.0 ; sys_platform==\"win32\"',\n    ],\n"
        "    tests_require=['toolz', \"freezegun\"],\n)\n")
    assert declared_dependencies(tmp_path, "loguru") == ["aiocontextvars>=0.2.0", "colorama>=0.3.4", "freezegun",
                                                         "toolz", "win32-setctime>=1.0.0"]


def _first_of_set(seed: str, words: list[str]) -> str:
    code = f"print(next(iter({set(words)!r})))"
    return subprocess.run(["/usr/bin/python3", "-c", code], env={"PYTHONHASHSEED": seed},
                          capture_output=True, text=True, check=True).stdout.strip()


def _fake_project(root, body: str):
    root.mkdir()
    (root / "test_fake.py").write_text("import unittest\n\nclass T(unittest.TestCase):\n" + body)
    return str(root)


def test_flaky_and_unrunnable_projects_are_detected(tmp_path):
    # an order-dependent test: it assumes the first element of a set, which depends on the hash seed
    words = [f"w{i}" for i in range(12)]
    first = _first_of_set("1", words)
    assert _first_of_set("2", words) != first   # precondition: the two seeds order the set differently
    flaky = _fake_project(tmp_path / "flaky", f"    def test_stable(self):\n        self.assertEqual(1, 1)\n"
                          f"    def test_order(self):\n        self.assertEqual(next(iter({set(words)!r})), {first!r})\n")
    stable = _fake_project(tmp_path / "stable", "    def test_a(self):\n        self.assertEqual(2, 1 + 1)\n"
                           "    def test_b(self):\n        self.assertTrue(False)\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "test_x.py").write_text("import numpy_that_is_not_there\n")
    entry = Entry("fake", "local", "0", "python", "python3 -m unittest -v")
    cfg = SandboxConfig()

    async def go():
        return [await check_project(d, entry, cfg, timeout_s=60) for d in (flaky, stable, str(broken))]

    f, s, b = asyncio.run(go())
    assert f.verdict == "flaky" and "test_order" in f.reason and "test_stable" not in f.reason
    assert s.verdict == "runs" and s.results[0] == {"test_a": "ok", "test_b": "FAIL"} and s.exit_codes == [1, 1]
    assert b.verdict == "cannot_run", b


def test_real_builder_keeps_only_facts_the_output_shows(tmp_path):
    """The manifest builder end to end on a local project (no network): a clean run_tests task, and
    fault tasks whose tests really fail in the sandbox (twice alike). Where a fault was injected is
    recorded for analysis; it is a fact only when what the reference commands print shows that file
    and line: an IndexError raised in the library (its traceback does), and a flipped comparison that
    only makes an assertion in the test file fail once the reference follows the call of that
    assertion's line to the function's definition (tasks.runs.follow_call). A fault the output never
    shows stays metadata: tests/test_tasks_validate.py's `calls` project."""
    import json

    from tasks import load_tasks
    from tasks.build import build_corpus

    proj = tmp_path / "mini"
    proj.mkdir()
    (proj / "mini.py").write_text("def is_even(n):\n    return n % 2 == 0\n\n\ndef smaller(a, b):\n"
                                  "    return a if a < b else b\n\n\ndef last(items):\n"
                                  "    return items[len(items) - 2 + 1]\n")
    (proj / "test_mini.py").write_text(
        "import unittest\nfrom mini import is_even, last, smaller\n\nclass T(unittest.TestCase):\n"
        "    def test_even(self):\n        self.assertTrue(is_even(4))\n"
        "    def test_smaller(self):\n        self.assertEqual(smaller(2, 3), 2)\n"
        "    def test_last(self):\n        self.assertEqual(last([1, 2, 3]), 3)\n")
    entry = Entry("mini", "local", "0", "python", "python3 -m unittest -v", path=str(proj))
    out = tmp_path / "corpus"
    outcomes = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not outcomes[0].excluded, outcomes[0].excluded
    tasks = {t.id: t for s in ("train", "validation", "test") for t in
             (load_tasks(str(out), s) if (out / f"{s}.jsonl").read_text() else [])}
    assert tasks["local-mini"].ground_truth.exit_status == 0
    faults = {i.split("~")[1]: t for i, t in tasks.items() if i != "local-mini" and "mutation" in t.ground_truth.observed
              and t.category in ("run_tests", "discover_tests")}
    assert set(faults) == {"flip_eq", "offbyone", "flip_lt"}
    where = {"flip_eq": 2, "offbyone": 10, "flip_lt": 6}
    for op, t in faults.items():
        mutation = t.ground_truth.observed["mutation"]
        assert (mutation["file"], mutation["line"], mutation["operator"]) == ("mini.py", where[op], op)
        causes = [f.value for f in t.ground_truth.facts if f.kind == "cause"]
        assert causes == [f"cause: {mutation['cause']} in mini.py:{where[op]}"], (op, causes)
        assert re.search(r"(?<!test_)mini\.py:", t.reference.report)
        assert t.ground_truth.exit_status == 1
        failing = [f.value for f in t.ground_truth.facts if f.kind == "failing_test"]
        assert failing == [{"flip_eq": "test_even", "offbyone": "test_last", "flip_lt": "test_smaller"}[op] + " fails"]
        # the scripted teacher tells the three fault tasks (one request text each) apart by what was printed
        assert t.ground_truth.observed["outputs"] and 1 in t.ground_truth.observed["exit_codes"]
        # a request that names no command (discover_tests) has a reference that looks around first
        assert (t.category == "discover_tests") == (t.reference.commands[0] == "ls") == ("`" not in t.request)
    summary = json.loads((out / "corpus.json").read_text())
    # every cause was shown (before the reference followed the call: flip_eq's and flip_lt's, and
    # flip_eq's again in its run_one_test task, were dropped)
    assert summary["unobservable_facts_dropped"] == {}
    assert len({t.split for t in tasks.values()}) == 1   # one project, one split



def test_a_long_runs_hidden_failing_tests_are_shown_by_its_failure_lines(tmp_path):
    """A fault that fails more tests than a task names (5), in a run longer than the observation cap
    (head and tail shown): the cut hides the first failures by name (the paper sample at a 4 KB cap
    dropped 46 failing tests so), so the reference runs the tests again filtered to their failure
    lines, and the task names the first five failing tests, which that shows. Before, it named
    those the capped run printed (the tail's last failure) and lost the rest."""
    from tasks import load_tasks
    from tasks.build import build_corpus
    from tasks.runs import failures_command

    proj = tmp_path / "long"
    proj.mkdir()
    (proj / "mini.py").write_text("def is_even(n):\n    return n % 2 == 0\n")
    passing = "".join(f"    def test_a{i:02}(self):\n        self.assertEqual(1, 1)\n" for i in range(20))
    faulted = "".join(f"    def test_z{i}(self):\n        self.assertTrue(is_even({2 * i}))\n" for i in range(1, 9))
    (proj / "test_mini.py").write_text("import unittest\nfrom mini import is_even\n\n\n"
                                       "class T(unittest.TestCase):\n" + passing + faulted)
    cap = 1024
    entry = Entry("long", "local", "0", "python", "python3 -m unittest -v", path=str(proj))
    out = tmp_path / "corpus"
    outcomes = build_corpus([entry], out, jobs=1, observation_cap=cap, progress=lambda s: None)
    assert not outcomes[0].excluded, outcomes[0].excluded
    tasks = [t for s in ("train", "validation", "test") if (out / f"{s}.jsonl").read_text()
             for t in load_tasks(str(out), s)]
    faults = [t for t in tasks if "mutation" in t.ground_truth.observed and t.category in ("run_tests", "discover_tests")]
    assert any(t.ground_truth.observed["mutation"]["operator"] == "flip_eq" for t in faults)
    filtered = failures_command(entry.test_command, "unittest")
    for t in faults:
        commands, outputs = t.reference.commands, t.ground_truth.observed["outputs"]
        shown = outputs[commands.index(entry.test_command)]   # what an episode shows of the test run
        assert "bytes omitted" in shown and "test_z1 " not in shown   # the cut hides the first failures
        lines = outputs[commands.index(filtered)]
        assert commands.index(filtered) == commands.index(entry.test_command) + 1
        assert lines.count("FAIL: test_z") == 8 and "test_a00" not in lines, lines
        named = [f.value.removesuffix(" fails") for f in t.ground_truth.facts if f.kind == "failing_test"]
        assert named == ["test_z1", "test_z2", "test_z3", "test_z4", "test_z5"], (t.id, named)
        assert "8 of 28 tests fail" in [f.value for f in t.ground_truth.facts]
    # the clean release fails nothing: no failure lines to show
    assert not [t for t in tasks if filtered in t.reference.commands and "mutation" not in t.ground_truth.observed]
