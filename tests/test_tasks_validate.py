"""Real-project tasks run where the agent runs: the build records each task's environment (the venv a
Python project's tests import, the node_modules an npm project's tests require, shared by its tasks),
every episode gets it, and `terminus tasks validate` replays the reference solutions through the
episode path and checks that the recorded ground truth is reproduced. Local fixture projects, no
network."""
import asyncio
import copy
import json
import os
import re
import subprocess
import sys

import pytest

from sandbox.config import SandboxConfig
from tasks import load_tasks
from tasks.build import build_corpus
from tasks.manifest import Entry, why_failed
from tasks.runs import short_name
from evaluation.validate import validate_tasks

pytestmark = pytest.mark.timeout(300)

MINI_PY = {
    "mini.py": "import os\n\n\ndef is_even(n):\n    return n % 2 == 0\n\n\ndef smaller(a, b):\n    return a if a < b else b\n",
    # a fault in the guard (`==` negated) raises two lines below it: the traceback shows the raise, and
    # only a look at the lines around it shows the guard, the cause
    "div.py": "def ratio(a, b):\n    if b == 0:\n        raise ZeroDivisionError('no ratio to zero')\n    return a / b\n",
    # pytest and tomli_w (the manifest's test_deps): only the project's own venv has them
    "test_mini.py": "import pytest\nimport tomli_w\nfrom div import ratio\nfrom mini import is_even, smaller\n\n\n"
                    "def test_even():\n    assert is_even(4) and tomli_w.dumps({}) == ''\n\n\n"
                    "def test_smaller():\n    assert smaller(2, 3) == 2\n\n\n"
                    "def test_ratio():\n    assert ratio(6, 3) == 2\n\n\n"
                    "@pytest.mark.parametrize('host', ['::1', '127.0.0.1'])\ndef test_host(host):\n"
                    "    assert is_even(len(host) - len(host))\n",
}
MINI_JS = {
    "index.js": "const pad = require('leftpad');\nexports.label = (n) => pad(String(n), 3);\n"
                "exports.isSmall = (n) => n < 10;\n",
    "test/label.test.js": "const test = require('node:test');\nconst assert = require('node:assert');\n"
                          "const { label, isSmall } = require('..');\n"
                          "test('label pads', () => assert.strictEqual(label(7), '  7'));\n"
                          "test('small numbers', () => assert.ok(isSmall(3)));\n",
    "package.json": '{"name": "minijs", "version": "0.0.0"}\n',
    # a dependency installed into the project's own tree, as `npm install` leaves it
    "node_modules/leftpad/index.js": "module.exports = (s, n) => ' '.repeat(Math.max(0, n - s.length)) + s;\n",
    "node_modules/leftpad/package.json": '{"name": "leftpad", "version": "1.0.0", "main": "index.js"}\n',
}


def _project(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


def _all(out):
    return [t for s in ("train", "validation", "test") if (out / f"{s}.jsonl").read_text()
            for t in load_tasks(str(out), s)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    entries = [Entry("minipy", "local", "0", "python", "python3 -m pytest -v -p no:cacheprovider", runner="pytest",
                     path=_project(tmp / "minipy", MINI_PY), test_deps=("tomli_w==1.0.0",)),
               Entry("minijs", "local", "0", "javascript", "node --test", runner="tap",
                     path=_project(tmp / "minijs", MINI_JS))]
    out = tmp / "corpus"
    outcomes = build_corpus(entries, out, jobs=2, progress=lambda s: None)
    assert not [o.excluded for o in outcomes if o.excluded]
    return out, _all(out)


def test_tasks_record_the_environment_their_ground_truth_was_made_in(corpus):
    out, tasks = corpus
    py = [t for t in tasks if t.project == "minipy"]
    js = [t for t in tasks if t.project == "minijs"]
    assert len(py) >= 3 and len(js) >= 2   # a clean task and fault tasks each
    venvs = {b for t in py for b in t.environment.ro_binds if b.endswith(":/opt/venv")}
    assert len(venvs) == 1 and all(t.environment.env["PATH"].startswith("/opt/venv/bin:") for t in py)
    venv = venvs.pop().split(":")[0]   # the project's own venv, in the corpus: pytest, pyflakes, its test_deps
    assert venv.startswith(str(out / "shared" / "venvs")) and list((out / "shared" / "venvs").glob("*/lib/*/site-packages/tomli_w"))
    assert not any(sys.prefix in b for t in tasks for b in t.environment.ro_binds)   # not the builder's venv
    shared = out / "shared" / "local-minijs" / "node_modules"
    for t in js:   # one node_modules for all the project's tasks, bound read-only; no copy per task
        assert t.environment.ro_binds == [f"{shared}:node_modules"]
        assert not os.path.exists(os.path.join(t.repo_dir, "node_modules"))
    assert (shared / "leftpad" / "index.js").is_file()
    stored = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert all(not b.startswith("/") for d in stored if d["project"] == "minijs" for b in d["environment"]["ro_binds"])


def test_a_python_project_gets_every_kind_of_task(corpus):
    _, tasks = corpus
    py = {t.category: t for t in tasks if t.project == "minipy"}
    assert {"run_one_test", "build", "lint"} <= set(py) and {"run_tests", "discover_tests"} & set(py)
    one = py["run_one_test"]
    assert one.reference.commands[0].split("::")[-1] in ("test_ratio", "test_smaller", "test_even")
    assert list(one.ground_truth.observed["tests"]) == [one.reference.commands[0].split()[-1]]   # that test alone
    lint = {f.kind: f.value for f in py["lint"].ground_truth.facts}
    assert lint["finding"] == "mini.py:1: 'os' imported but unused" and lint["counts"] == "1 findings"
    build = py["build"]
    loc = [f.value for f in build.ground_truth.facts if f.kind == "error_location"]
    mutation = build.ground_truth.observed["mutation"]
    assert build.setup == [] and loc == [f"{mutation['file']} line {mutation['line']}"]
    assert any("SyntaxError" in f.value for f in build.ground_truth.facts)


def test_a_parametrized_pytest_id_with_colons_keeps_its_name(corpus):
    assert short_name("tests/test_net.py::TestHost::test_host[::1]", "pytest") == "test_host[::1]"
    assert short_name("test_mini.py::test_even", "pytest") == "test_even"
    assert short_name("3 small numbers", "tap") == "small numbers"
    _, tasks = corpus
    failing = {f.value for t in tasks if t.project == "minipy" for f in t.ground_truth.facts if f.kind == "failing_test"}
    assert failing and all(":" not in v.split("[")[0] for v in failing)
    counts = [f.value for t in tasks if t.project == "minijs" for f in t.ground_truth.facts if f.kind == "counts"]
    assert counts and all("TAP assertions" in v for v in counts)   # TAP counts test points: it says so


def test_a_fault_tasks_reference_looks_at_the_line_its_failure_points_to(corpus):
    """After the failing run, the reference shows the lines around the place the output points to (the
    frame the project raised from, else the failing assertion) and the report cites that line. The
    injected cause is a fact only when some output shows its file:line: for the guard in div.py the
    look does (the traceback shows only the raise below it); for mini.py's faults the look shows the
    failing assertion in test_mini.py (whose name must not pass for mini.py), and the reference then
    follows the function it calls into mini.py, whose lines show the fault."""
    _, tasks = corpus
    faults = [t for t in tasks if t.project == "minipy" and t.category in ("run_tests", "discover_tests", "run_one_test")
              and "mutation" in t.ground_truth.observed]
    assert {t.ground_truth.observed["mutation"]["file"] for t in faults} == {"div.py", "mini.py"}
    for t in faults:
        mutation = t.ground_truth.observed["mutation"]
        facts = {f.kind: f for f in t.ground_truth.facts}
        outputs, look = t.ground_truth.observed["outputs"], t.reference.commands[-1]
        looks = 1 if mutation["file"] == "div.py" else 3   # the failing place; then grep and the function's lines
        assert t.ground_truth.observed["exit_codes"][-looks - 1:] == [1] + [0] * looks and t.ground_truth.exit_status == 1
        if mutation["file"] == "div.py":   # raised at div.py:3, the negated guard at div.py:2
            assert look == "grep -Hn '' div.py | sed -n '1,6p'"
            assert facts["failing_line"].value == "the failing line div.py:3 reads `raise ZeroDivisionError('no ratio to zero')`"
            assert facts["cause"].value == "cause: an equality test is negated in div.py:2"
            assert "div.py:2:    if b != 0:" in outputs[-1]
            assert "div.py:2" not in "".join(outputs[:-1])   # only the look shows it
        else:   # the failing assertion is in the test file; the function it calls holds the fault
            name, first, last = ("is_even", 4, 5) if mutation["operator"] == "flip_eq" else ("smaller", 8, 9)
            assert t.reference.commands[-3].startswith("grep -Hn '' test_mini.py | sed -n ")
            assert t.reference.commands[-2].startswith("grep -rnE ") and f"def {name}[" in t.reference.commands[-2]
            assert look == f"grep -Hn '' mini.py | sed -n '{first},{last}p'"
            assert facts["failing_line"].value.startswith("the failing line test_mini.py:")
            assert facts["cause"].value.endswith(f" in mini.py:{mutation['line']}")
            assert not any(re.search(r"(?<!test_)mini\.py:", o) for o in outputs[:-2])   # only the follow shows it
        assert facts["failing_line"].evidence[0] in outputs[-looks]
        assert facts["failing_line"].value.split(" reads ")[0].removeprefix("the failing line ") in t.reference.report


def test_a_javascript_fault_tasks_reference_follows_the_call_of_its_failing_test(corpus):
    """node's test runner points at the failing test's line; it calls isSmall(), which the reference
    finds (`exports.isSmall = ...`, node_modules left out) and shows: the flipped comparison is there."""
    _, tasks = corpus
    faults = [t for t in tasks if t.project == "minijs" and "mutation" in t.ground_truth.observed]
    assert faults and {t.ground_truth.observed["mutation"]["operator"] for t in faults} == {"flip_lt"}
    for t in faults:
        facts = {f.kind: f.value for f in t.ground_truth.facts}
        assert t.reference.commands[-3] == "grep -Hn '' test/label.test.js | sed -n '2,8p'"
        assert t.reference.commands[-2].startswith("grep -rnE --include='*.js' ") and "NAME" not in t.reference.commands[-2]
        assert t.ground_truth.observed["outputs"][-2].strip() == "./index.js:3:exports.isSmall = (n) => n >= 10;"
        assert t.reference.commands[-1] == "grep -Hn '' index.js | sed -n '3,3p'"
        assert facts["cause"] == "cause: a comparison is flipped (< became >=) in index.js:3"


# a failing assertion in the test file calls the function under test: only following that call shows
# the fault in clamp() (flip_lt); the fault in _stop() (offbyone) is one call further, out of sight
CALLS_PY = {
    "shapes.py": "def clamp(x, low, high):\n    if x < low:\n        return low\n    return min(x, high)\n\n\n"
                 "def count_to(n):\n    return list(range(1, _stop(n)))\n\n\n"
                 "def _stop(n):\n    return n + 1\n",
    "test_shapes.py": "from shapes import clamp, count_to\n\n\n"
                      "def test_clamp():\n    assert clamp(5, 0, 10) == 5\n\n\n"
                      "def test_count_to():\n    assert count_to(3) == [1, 2, 3]\n",
}


def test_a_fault_seen_only_in_the_called_function_is_a_fact_when_the_reference_follows_the_call(tmp_path, tok):
    """pytest shows only the failing assertion in the test file. The reference then finds the function
    that line calls (`grep -rn "def clamp"`) and shows its definition: the flipped guard in clamp() is
    in it, so the cause is observable and kept; no earlier output shows it (a reference without the
    follow drops it). The off-by-one in _stop(), which count_to() calls, is outside count_to()'s
    lines: its cause stays dropped."""
    entry = Entry("calls", "local", "0", "python", "python3 -m pytest -v -p no:cacheprovider", runner="pytest",
                  path=_project(tmp_path / "calls", CALLS_PY))
    out = tmp_path / "corpus"
    [o] = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not o.excluded, o.excluded
    tasks = _all(out)
    faults = [t for t in tasks if t.category in ("run_tests", "discover_tests", "run_one_test")
              and "mutation" in t.ground_truth.observed]
    assert {t.ground_truth.observed["mutation"]["operator"] for t in faults} == {"flip_lt", "offbyone"}
    # the causes dropped as unobservable: the off-by-one's alone (every fault task's before the reference followed the call)
    assert o.dropped.get("cause") == sum(t.ground_truth.observed["mutation"]["operator"] == "offbyone" for t in faults)
    for t in faults:
        facts = {f.kind: f for f in t.ground_truth.facts}
        outputs = t.ground_truth.observed["outputs"]
        name, sig, first, last = (("clamp", "x, low, high", 1, 4) if t.ground_truth.observed["mutation"]["operator"]
                                  == "flip_lt" else ("count_to", "n", 7, 8))
        assert t.reference.commands[-3].startswith("grep -Hn '' test_shapes.py | sed -n ")
        assert t.reference.commands[-2] == f"grep -rnE --include='*.py' '^[[:space:]]*(async[[:space:]]+)?def {name}[[:space:]]*\\(' ."
        assert t.reference.commands[-1] == f"grep -Hn '' shapes.py | sed -n '{first},{last}p'"
        assert outputs[-2].strip() == f"./shapes.py:{first}:def {name}({sig}):"   # grep found it there
        assert facts["failing_line"].value.startswith("the failing line test_shapes.py:")
        if name == "clamp":   # shapes.py:2, the flipped guard, is shown by the follow alone
            assert facts["cause"].value == "cause: a comparison is flipped (< became >=) in shapes.py:2"
            assert facts["cause"].evidence == ["shapes.py:2"] and "shapes.py:2:    if x >= low:" in outputs[-1]
            assert not any(re.search(r"(?<!test_)shapes\.py:2\b", o) for o in outputs[:-1])
            assert "shapes.py:2" in t.reference.report
        else:   # shapes.py:12 is _stop's, which no output shows
            assert "cause" not in facts and not any(re.search(r"(?<!test_)shapes\.py:12\b", o) for o in outputs)
    checks = asyncio.run(validate_tasks(tasks, SandboxConfig(), tok))
    assert all(c.ok for c in checks), [(c.task_id, c.problems) for c in checks if not c.ok]


def test_following_a_call_reads_the_statement_the_look_printed():
    """The names a failing line calls, as the look printed it (a call spread over lines whole), the
    builtins and assert helpers left out; a function's lines end where its body does."""
    from tasks.runs import SourceView, called_names, python_end, statement_at

    out = ("tests/test_x.py:4:def test_it(self):\ntests/test_x.py:5:    self.assertEqual(len(merge(\n"
           "tests/test_x.py:6:        split(a), b)), 2)\ntests/test_x.py:7:    print(other(1))\n")
    view = SourceView("look", out, 0, "tests/test_x.py", 5)
    assert statement_at(view) == "    self.assertEqual(len(merge(         split(a), b)), 2)"
    assert called_names(statement_at(view)) == ["merge", "split"]
    assert called_names("assert isinstance(parse(x), dict) and obj.Value(1)") == ["parse", "Value"]
    assert called_names("assert t.format(1) == format(2) and fmt (3)") == ["format", "fmt"]   # a method, not the builtin
    src = ["class A:", "    def f(", "        self, x,", "    ):", "        y = x", "", "        return y", "",
           "    def g(self):", "        pass"]
    assert python_end(src, 2) == 7 and python_end(src, 9) == 10


JS_DEFS = {   # name -> (its definition's first and last line in JS_SOURCE)
    "plain": (1, 4), "gen": (5, 5), "arrow": (6, 7), "shortArrow": (8, 8), "exported": (9, 9), "proto": (10, 12),
    "method": (14, 16), "prop": (19, 19), "$get": (25, 25),
}
JS_SOURCE = ("function plain(a,\n    b) {\n  return a < b;\n}\nexport async function* gen(x) { yield x; }\n"
             "const arrow = (a) =>\n  a + 1;\nlet shortArrow = x => x * 2;\nmodule.exports.exported = function (n) { return n; };\n"
             "Foo.prototype.proto = async function () {\n  if (this.a) { return 1; }\n};\nclass Foo {\n"
             "  static method(a, b) {\n    return plain(a, b);\n  }\n}\nconst o = {\n  prop: (z) => z,\n};\n"
             "plain(1, 2);\nif (plain(1, 2)) {\n}\nconst notAFunction = 3;\nconst $get = (k) => k;\n")


def test_javascript_definitions_are_found_by_grep_and_by_the_builder_alike(tmp_path):
    """Each form of a JavaScript function definition is found at its line, by `grep -rnE` (what the
    reference runs) and by the builder's own scan alike, and not its calls; its window ends where
    its braces close, or where an arrow's expression does."""
    from tasks.runs import DEFINITIONS

    js = DEFINITIONS[".js"]
    _project(tmp_path, {"lib/defs.js": JS_SOURCE, "node_modules/dep/index.js": "function plain() {}\n",
                        "test/defs.test.js": "function plain() {}\n"})
    lines = JS_SOURCE.splitlines()
    for name, (first, last) in [*JS_DEFS.items(), ("notAFunction", (0, 0))]:
        at = [n for n, text in enumerate(lines, 1) if js.regex(name).match(text)]
        grep = subprocess.run(js.command(name), shell=True, cwd=tmp_path, capture_output=True, text=True)
        assert at == ([first] if first else []) and js.found(grep.stdout) == [("lib/defs.js", n) for n in at], name
        assert not first or js.end(lines, first) == last, name
    # the test file's definition is printed, but it is not the project's: found() leaves it out
    assert "./test/defs.test.js:1:" in subprocess.run(js.command("plain"), shell=True, cwd=tmp_path, capture_output=True,
                                                      text=True).stdout


def test_a_failing_place_is_a_file_of_the_repository(tmp_path):
    """Places as each tool prints them: pytest's and gcc's path:line, a Python traceback, node's file://
    frame, the JVM's bare file name; a place outside the repository (the interpreter's, a venv's) or
    past a file's end is none, and a source file comes before a test file."""
    from tasks.runs import failing_place

    _project(tmp_path, {"src/calc.py": "a\nb\nc\n", "tests/test_calc.py": "x\ny\n", "lib/Calc.java": "1\n2\n3\n4\n",
                        "index.js": "1\n2\n"})
    def place(out):
        return failing_place(out, tmp_path, "/work/repo")
    assert place("tests/test_calc.py:2: AssertionError\n") == ("tests/test_calc.py", 2)
    assert place('File "/work/repo/tests/test_calc.py", line 1, in t\n  File "/work/repo/src/calc.py", line 3, in f\n'
                 '  File "/usr/lib/python3.11/json/__init__.py", line 9\n') == ("src/calc.py", 3)
    assert place("    at Object.<anonymous> (file:///work/repo/index.js:2:7)\n") == ("index.js", 2)
    assert place("\tat mini.Calc.max(Calc.java:4)\n") == ("lib/Calc.java", 4)
    assert place("src/calc.py:9: in f\n/opt/venv/lib/python3.11/site-packages/x.py:3: in g\n") is None


def test_reference_solutions_reproduce_their_ground_truth_through_episodes(corpus, tok):
    """The check the trainer depends on: each reference, replayed through the episode path with the
    task's environment, exits as recorded and shows every fact; the scripted teacher tells apart
    tasks whose requests coincide (made identical here for the tasks of a project and kind) by what
    their commands printed."""
    _, tasks = corpus
    same = copy.deepcopy(tasks)
    for t in same:
        t.request = f"Please look at {t.project}: {t.category}."
    assert len({t.request for t in same}) < len(same)
    checks = asyncio.run(validate_tasks(same, SandboxConfig(), tok))
    assert [c.task_id for c in checks] == [t.id for t in same]
    assert all(c.ok for c in checks), [(c.task_id, c.problems) for c in checks if not c.ok]


def test_without_its_environment_a_task_fails_validation(corpus, tok):
    """What episodes got before tasks carried their environment: no venv (`No module named pytest`)
    and no node_modules (`Cannot find module 'leftpad'`). Validation says which facts are lost."""
    from tasks.types import TaskEnvironment

    _, tasks = corpus
    bare = copy.deepcopy([t for t in tasks if t.id in ("local-minipy", "local-minijs")])
    for t in bare:
        t.environment = TaskEnvironment()
    checks = asyncio.run(validate_tasks(bare, SandboxConfig(), tok))
    assert not any(c.ok for c in checks)
    assert all(any("exit codes" in p or "not reproduced" in p for p in c.problems) for c in checks), checks


def test_validate_cli_passes_a_good_corpus_and_fails_a_tampered_one(corpus, tmp_path):
    out, _ = corpus
    cli = [sys.executable, "-m", "terminus.cli", "tasks", "validate"]
    r = subprocess.run([*cli, str(out), "--sample", "2"], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validating 2 of" in r.stdout and "2 reproduce their ground truth, 0 do not" in r.stdout
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-a", str(out), str(bad)], check=True)
    split = next(s for s in ("train", "validation", "test") if (bad / f"{s}.jsonl").read_text())
    lines = (bad / f"{split}.jsonl").read_text().splitlines()
    d = json.loads(lines[0])
    d["ground_truth"]["facts"][0]["evidence"] = ["a line the tests never print"]
    (bad / f"{split}.jsonl").write_text("\n".join([json.dumps(d), *lines[1:]]) + "\n")
    # a copy elsewhere: the shared node_modules are found relative to the corpus, not where it was built
    r = subprocess.run([*cli, str(bad), "--split", split], capture_output=True, text=True, timeout=240)
    assert r.returncode == 1 and f"{d['id']}: FAILED" in r.stdout and "a line the tests never print" in r.stdout
    assert r.stdout.count(": ok") == len(lines) - 1, r.stdout


def test_exclusion_reasons_name_what_is_missing():
    out = ("Traceback (most recent call last):\n  File \"t.py\", line 1\nModuleNotFoundError: No module named 'yaml'\n"
           + "noise\n" * 200)
    assert why_failed(out).startswith("missing: yaml; ")
    assert why_failed("Error: Cannot find module 'chai'\n").startswith("missing: chai; ")


def test_an_npm_install_failure_says_what_npm_said(tmp_path, monkeypatch):
    """A real process on PATH in npm's place: it fails like npm does for a git dependency that cannot be
    fetched, both times (with and without optional dependencies)."""
    from tasks.real import npm_install

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text("#!/bin/sh\necho \"$@\" >> \"$(dirname \"$0\")/calls\"\n"
                                 "echo 'npm ERR! code 128' >&2\n"
                                 "echo 'npm ERR! An unknown git error occurred' >&2\nexit 1\n")
    (bin_dir / "npm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="npm ERR! An unknown git error occurred"):
        npm_install(tmp_path)
    calls = (bin_dir / "calls").read_text().splitlines()
    assert len(calls) == 2 and "--omit=optional" in calls[1]


def test_a_corpus_built_for_more_output_than_episodes_show_is_refused(corpus):
    from tasks.corpus import CorpusError
    out, _ = corpus
    split = next(s for s in ("train", "validation", "test") if (out / f"{s}.jsonl").read_text())
    assert load_tasks(str(out), split, observation_cap=16384)
    with pytest.raises(CorpusError, match="--observation-cap 4096"):
        load_tasks(str(out), split, observation_cap=4096)
