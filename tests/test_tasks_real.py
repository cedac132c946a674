"""The real-project builder's compiled paths (C/C++, Java): parsers on real test output, the Debian
ecosystem's manifest checks, and local C and Java projects built and fault-injected end to end in a
real sandbox (no network)."""
import dataclasses
import json

import re

import pytest

from tasks.manifest import _parse, load_manifest

# ctest, from a real run of cJSON 1.7.15's suite (Debian cjson 1.7.15-1+deb12u4) with a flipped
# comparison in cJSON.c, inside the sandbox
CTEST_CJSON = """\
Internal ctest changing into directory: /work/repo/build
Test project /work/repo/build
      Start  1: cJSON_test
 1/19 Test  #1: cJSON_test .......................***Exception: SegFault  0.01 sec
      Start  2: parse_examples
 2/19 Test  #2: parse_examples ...................***Failed    0.01 sec
      Start  3: parse_number
 3/19 Test  #3: parse_number .....................   Passed    0.01 sec
      Start  4: parse_hex4
 4/19 Test  #4: parse_hex4 .......................   Passed    0.01 sec
10/19 Test #10: print_number .....................***Failed    0.00 sec
19/19 Test #19: minify_tests .....................   Passed    0.00 sec

63% tests passed, 7 tests failed out of 19

Total Test time (real) =   0.11 sec

The following tests FAILED:
\t  1 - cJSON_test (SEGFAULT)
\t  2 - parse_examples (Failed)
\t 10 - print_number (Failed)
Errors while running CTest
"""

# automake's parallel harness, from a real `make check` of libmd 1.0.4 (Debian libmd 1.0.4-2) with a
# wrong MD5 initial state
AUTOMAKE_LIBMD = """\
make[3]: Entering directory '/work/repo/test'
PASS: md2
PASS: md4
FAIL: md5
PASS: rmd160
PASS: sha1
PASS: sha2
============================================================================
Testsuite summary for libmd 1.0.4
============================================================================
# TOTAL: 6
# PASS:  5
# SKIP:  0
# XFAIL: 0
# FAIL:  1
# XPASS: 0
# ERROR: 0
============================================================================
See test/test-suite.log
make[3]: *** [Makefile:716: test-suite.log] Error 1
"""

# the older serial automake harness, from libcsv 3.0.3's real `make check`
AUTOMAKE_SERIAL_LIBCSV = """\
libtool: link: gcc -g -O2 -o .libs/check_csv test_csv.o  /work/repo/.libs/libcsv.so
All tests passed
PASS: check_csv
1 test passed
"""

# the JUnit Platform console launcher's tree, excerpts of real runs of commons-codec 1.15 (Debian
# libcommons-codec-java 1.15-1; a vintage parameterized class, an aborted and a skipped test; one
# failure from a run with a resource missing) and commons-exec 1.3 (a slow test printed with its time)
JUNIT_TREE = """Test with String : 1804 millis
╷
├─ JUnit Platform Suite ✔
├─ JUnit Jupiter ✔
└─ JUnit Vintage ✔
   ├─ CharSequenceUtilsTest ✔
   │  ├─ testRegionMatches ✔
   │  └─ testConstructor ✔
   ├─ Base64Test ✔
   │  ├─ testCodec265 ■ Not enough free memory for the test
   │  └─ testBasicSpace ↷ 
   ├─ RuleTest ✔
   │  └─ testPhonemeComparedToSelfIsZero ✘ Could not initialize class org.apache.commons.codec.language.bm.Languages
   ├─ XXHash32Test ✔
   │  ├─ [0] ✔
   │  │  ├─ verifyIncrementalChecksum[0] ✔
   │  │  └─ verifyChecksum[0] ✔
   │  └─ [1] ✔
   │     └─ verifyChecksum[1] ✘ expected:<1> but was:<2>
   └─ DefaultExecutorTest ✔
      └─ testExecuteWatchdogSync 20056 ms ✔

Test run finished after 14285 ms
[         7 tests successful      ]
[         2 tests failed          ]
"""
# a Jupiter class with a parameterized method (display names "[1] 5") and a plain test
JUNIT_JUPITER = """├─ JUnit Jupiter ✔
│  └─ MathTest ✔
│     ├─ adds() ✔
│     └─ squares(int) ✔
│        ├─ [1] 5 ✔
│        └─ [2] 7 ✘ expected: <49> but was: <48>
└─ JUnit Vintage ✔
"""


def test_junit_tree_parser_on_real_output():
    assert _parse("junit", JUNIT_TREE) == {
        "CharSequenceUtilsTest::testRegionMatches": "PASS", "CharSequenceUtilsTest::testConstructor": "PASS",
        "Base64Test::testCodec265": "SKIP", "Base64Test::testBasicSpace": "SKIP",
        "RuleTest::testPhonemeComparedToSelfIsZero": "FAIL",
        "XXHash32Test::[0]::verifyIncrementalChecksum[0]": "PASS", "XXHash32Test::[0]::verifyChecksum[0]": "PASS",
        "XXHash32Test::[1]::verifyChecksum[1]": "FAIL", "DefaultExecutorTest::testExecuteWatchdogSync": "PASS"}
    assert _parse("junit", JUNIT_JUPITER) == {"MathTest::adds": "PASS", "MathTest::squares[1]": "PASS",
                                              "MathTest::squares[2]": "FAIL"}
    # no test ran (the class path is wrong): only engines, no results
    assert _parse("junit", "├─ JUnit Jupiter ✔\n└─ JUnit Vintage ✔\n") == {}


# Maven Surefire's plain console report (`-Dsurefire.useFile=false -Dsurefire.reportFormat=plain`), cut
# from joda-convert's run with a fault (its pom runs Surefire twice: the second execution's totals
# follow the first's), and a class whose name has a `$`
SUREFIRE = """[INFO] Running org.joda.convert.TestStringConvert
[ERROR] Tests run: 4, Failures: 1, Errors: 1, Skipped: 1, Time elapsed: 0.163 s <<< FAILURE! - in org.joda.convert.TestStringConvert
[ERROR] test_convertToString_inherit(org.joda.convert.TestStringConvert)  Time elapsed: 0 s  <<< FAILURE!
java.lang.AssertionError: expected:<A> but was:<null>
	at org.joda.convert.TestStringConvert.test_convertToString_inherit(TestStringConvert.java:120)

[ERROR] test_constructor(org.joda.convert.TestStringConvert)  Time elapsed: 0.001 s
[ERROR] test_convertToString_null(org.joda.convert.TestStringConvert)  Time elapsed: 0 s  <<< ERROR!
java.lang.NullPointerException: Cannot invoke "Object.getClass()" because "object" is null

[WARNING] test_slow(org.joda.convert.TestStringConvert)  Time elapsed: 0 s  <<< SKIPPED!
[INFO] Running org.joda.convert.Outer$Inner
[INFO] Tests run: 1, Failures: 0, Errors: 0, Skipped: 0, Time elapsed: 0.01 s - in org.joda.convert.Outer$Inner
[INFO] nested(org.joda.convert.Outer$Inner)  Time elapsed: 0.002 s
[INFO]
[INFO] Results:
[INFO]
[ERROR] Failures:
[ERROR]   TestStringConvert.test_convertToString_inherit:120 expected:<A> but was:<null>
[ERROR] Errors:
[ERROR]   TestStringConvert.test_convertToString_null:92 NullPointer Cannot invoke "Object.getClass()"
[INFO]
[ERROR] Tests run: 5, Failures: 1, Errors: 1, Skipped: 1
[INFO]
[INFO] Tests run: 3, Failures: 0, Errors: 0, Skipped: 0
[INFO] BUILD FAILURE
"""


def test_surefire_parser_and_totals_on_real_output():
    from tasks.runs import FAILURE_LINES, failing_names, summary_totals
    results = _parse("surefire", SUREFIRE)
    assert results == {"TestStringConvert::test_convertToString_inherit": "FAIL",
                       "TestStringConvert::test_constructor": "PASS",
                       "TestStringConvert::test_convertToString_null": "ERROR",
                       "TestStringConvert::test_slow": "SKIP", "Outer$Inner::nested": "PASS"}
    assert failing_names(results, "surefire") == ["test_convertToString_inherit", "test_convertToString_null"]
    # each module's (or execution's) totals after "Results:", not a class's line; errors fail too
    totals = summary_totals("surefire", SUREFIRE)
    assert (totals.failed, totals.total) == (2, 8)
    assert totals.evidence == ["Tests run: 5, Failures: 1, Errors: 1, Skipped: 1", "Tests run: 3, Failures: 0, Errors: 0, Skipped: 0"]
    # the reference's filter for a long run's failures keeps the failing tests' lines only
    assert [line for line in SUREFIRE.splitlines() if re.search(FAILURE_LINES["surefire"], line)] == [
        "[ERROR] Tests run: 4, Failures: 1, Errors: 1, Skipped: 1, Time elapsed: 0.163 s <<< FAILURE! - in org.joda.convert.TestStringConvert",
        "[ERROR] test_convertToString_inherit(org.joda.convert.TestStringConvert)  Time elapsed: 0 s  <<< FAILURE!",
        "[ERROR] test_convertToString_null(org.joda.convert.TestStringConvert)  Time elapsed: 0 s  <<< ERROR!"]
    # Maven's compiler error names file:line as a report would state it
    from tasks.groundtruth import build_facts
    facts = build_facts("[INFO] Compiling 1 source file\n[ERROR] COMPILATION ERROR : \n"
                        "[ERROR] /work/repo/src/main/java/mini/Calc.java:[5,17] ')' expected\n")
    assert [(f.kind, f.value) for f in facts] == [("error_message", "')' expected"), ("error_location", "Calc.java:5")]
    assert facts[1].evidence == ["src/main/java/mini/Calc.java:[5,"]


def test_ctest_parser_on_real_output():
    r = _parse("ctest", CTEST_CJSON)
    assert r == {"cJSON_test": "ERROR", "parse_examples": "FAIL", "parse_number": "PASS", "parse_hex4": "PASS",
                 "print_number": "FAIL", "minify_tests": "PASS"}
    assert _parse("ctest", "Test project /work/repo/build\nNo tests were found!!!\n") == {}


def test_automake_parser_on_real_output():
    assert _parse("automake", AUTOMAKE_LIBMD) == {"md2": "PASS", "md4": "PASS", "md5": "FAIL", "rmd160": "PASS",
                                                  "sha1": "PASS", "sha2": "PASS"}
    assert _parse("automake", AUTOMAKE_SERIAL_LIBCSV) == {"check_csv": "PASS"}
    assert _parse("automake", "make: *** No rule to make target 'check'.  Stop.\n") == {}


def test_failing_statuses_of_the_new_runners_count_as_failures():
    from tasks.runs import failed, result_facts
    facts = result_facts(_parse("ctest", CTEST_CJSON), "ctest", CTEST_CJSON)
    assert [f.value for f in facts if f.kind == "failing_test"] == ["cJSON_test fails", "parse_examples fails",
                                                                     "print_number fails"]
    [counts] = [f for f in facts if f.kind == "counts"]
    # the counts are the summary's, which the agent reads, not the 6 result lines of this excerpt
    assert counts.value == "7 of 19 tests fail" and counts.evidence == ["63% tests passed, 7 tests failed out of 19"]
    assert not failed("PASS") and not failed("SKIP") and failed("FAIL") and failed("ERROR")


# pytest -v of a suite whose parametrized ids hold spaces (parso's): the result lines parse for 2 tests,
# the summary counts 4
PYTEST_SPACES = """test/test_a.py::test_ok PASSED                                           [ 25%]
test/test_a.py::test_comp[[x for x in y]-3.8] PASSED                     [ 50%]
test/test_a.py::test_comp[[x for x in z]-3.9] FAILED                     [ 75%]
test/test_a.py::test_bad FAILED                                          [100%]
=========================== short test summary info ============================
FAILED test/test_a.py::test_comp[[x for x in z]-3.9] - assert 1 == 2
FAILED test/test_a.py::test_bad - assert 0
===================== 2 failed, 2 passed, 1 warning in 0.12s =====================
"""


def test_counts_are_what_the_runners_summary_says():
    """The parso sample said "all 1171 tests pass" (its parsed result lines) where pytest printed
    "1989 passed": a count fact is the summary's numbers, whatever the per-test lines parse to."""
    from tasks.runs import result_facts

    def counts(runner, output):
        results = _parse(runner, output)
        return [(f.value, f.evidence) for f in result_facts(results, runner, output) if f.kind == "counts"]
    assert len(_parse("pytest", PYTEST_SPACES)) == 2
    assert counts("pytest", PYTEST_SPACES) == [("2 of 4 tests fail", ["2 failed", "2 passed"])]
    assert counts("pytest", "a.py::t PASSED\n==== 1989 passed in 7.76s ====\n") == [
        ("all 1989 tests pass", ["1989 passed"])]
    assert counts("pytest", "a.py::t PASSED\n1 failed, 3 passed, 2 skipped, 1 xfailed in 0.1s\n")[0][0] == \
        "1 of 7 tests fail"
    unittest_out = ("test_a (t.T.test_a) ... FAIL\ntest_b (t.T.test_b) ... ok\n\nRan 5 tests in 0.003s\n\n"
                    "FAILED (failures=2, errors=1)\n")
    assert counts("unittest", unittest_out) == [("3 of 5 tests fail", ["Ran 5 tests", "FAILED (failures=2, errors=1)"])]
    # tape pads its counts and prints no fail line when none failed; two TAP streams add up
    assert counts("tap", "ok 1 a\nok 2 b\n\n# tests 3\n# pass  3\n\n# ok\n")[0][0] == "all 3 TAP assertions pass"
    from tasks.runs import summary_totals
    assert summary_totals("tap", "# tests 2\n# pass 1\n# fail 1\n# tests 3\n# pass 3\n# fail 0\n").failed == 1
    assert summary_totals("tap", "# tests 2\n# pass 1\n# fail 1\n# tests 3\n# pass 3\n# fail 0\n").total == 5
    assert counts("automake", AUTOMAKE_LIBMD)[0][0] == "1 of 6 tests fail"
    assert counts("junit", JUNIT_TREE + "[         9 tests found           ]\n")[0][0] == "2 of 9 tests fail"
    # no totals printed, or totals that contradict themselves (node's "# tests 0" with "# fail 1": a file
    # that failed to load): no count fact, rather than the parsed lines' count
    assert counts("junit", JUNIT_TREE) == []
    assert counts("tap", "not ok 1 - test/a.js\n# tests 0\n# pass 0\n# fail 1\n") == []
    assert counts("automake", AUTOMAKE_SERIAL_LIBCSV) == []


def test_a_failing_tests_name_is_matched_whole():
    """`testCreate` is not shown, nor reported, by `testCreateWithNull` (openjson's sample task named
    a failing test whose name the output printed only inside a longer one): the builder's check and
    the judge match the name whole, qualified or not."""
    from judge.rules import task_items
    from tasks.runs import observable, result_facts
    from tasks.types import GroundTruth, Task

    results = {"JSONTest::testCreate": "FAIL", "JSONTest::testCreateWithNull": "PASS", "Other::putAll": "FAIL"}
    shown = "│  ├─ testCreateWithNull ✔\n│  └─ putAll ✘ expected\n"
    facts = [f for f in result_facts(results, "junit", shown) if f.kind == "failing_test"]
    kept, lost = observable(facts, shown)
    assert [f.value for f in kept] == ["putAll fails"] and [f.value for f in lost] == ["testCreate fails"]
    assert kept[0].evidence == ["putAll"]
    [fact] = [f for f in result_facts(results, "junit") if f.value == "testCreate fails"]
    task = Task("t", "java", "run_tests", "p", "", "", ground_truth=GroundTruth(1, [fact]))
    for report, states in [("testCreateWithNull fails", False), ("test-testCreate fails", False),
                           ("testCreate[1] fails", False), ("JSONTest.testCreate() fails", True),
                           ("testCreate fails.", True), ("FAILED a.py::testCreate - x", True)]:
        assert task_items(task, report)[0].code is states, report


DEB = {"name": "cjson", "ecosystem": "debian", "version": "1.7.15-1+deb12u4", "language": "c",
       "runner": "ctest", "setup": ["cmake -B build", "cmake --build build"], "test_command": "ctest --test-dir build"}


def test_debian_entries_need_an_exact_debian_version(tmp_path):
    lines = [json.dumps(DEB), json.dumps({**DEB, "name": "zlib", "version": "1:1.2.13.dfsg-1"}),
             json.dumps({**DEB, "name": "a", "version": "latest"}), json.dumps({**DEB, "name": "b", "version": "1.7.*"}),
             json.dumps({**DEB, "name": "c", "version": ">=1.7"}), json.dumps({**DEB, "name": "d", "runner": "maven"})]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines))
    entries, problems = load_manifest(path)
    assert [(e.name, e.version) for e in entries] == [("cjson", "1.7.15-1+deb12u4"), ("zlib", "1:1.2.13.dfsg-1")]
    reasons = {p.line: p.reason for p in problems}
    assert set(reasons) == {3, 4, 5, 6}
    for n in (3, 4, 5):
        assert "not an exact Debian source version" in reasons[n] and "apt-cache showsrc" in reasons[n]
    assert "unknown runner" in reasons[6]


def test_debian_fetch_reports_a_missing_package_clearly(tmp_path, monkeypatch):
    """No network: apt-get is replaced by a stub that fails like apt-get does for an unknown version."""
    import subprocess

    import tasks.real as real
    from tasks.manifest import Entry

    monkeypatch.setattr(real, "debian_state", lambda root=None: [])
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 100, "", "E: Can not find version '9.9-1' of package 'cjson'\nE: Unable to find a source package"))
    try:
        real.fetch(Entry("cjson", "debian", "9.9-1", "c", "ctest"), tmp_path / "w")
    except RuntimeError as e:
        assert "apt-get source cjson=9.9-1 failed" in str(e) and "Can not find version" in str(e)
    else:
        raise AssertionError("a failed apt-get source must raise")


def test_c_sources_for_faults_are_the_compiled_ones(tmp_path):
    from tasks.real import fault_candidates
    (tmp_path / "src").mkdir()
    (tmp_path / "examples").mkdir()
    (tmp_path / "build").mkdir()
    for f in ("src/lib.c", "src/unused.c", "examples/demo.c", "src/lib.h", "test_lib.c"):
        (tmp_path / f).write_text("int f(int a) {\n    return a == 1;\n}\n")
    (tmp_path / "build" / "lib.c.o").write_text("")
    files = [m.file for m in fault_candidates(tmp_path, "c", built=tmp_path)]
    assert files == ["src/lib.c", "src/lib.h"]     # compiled sources, then headers; no tests/examples
    assert {m.file for m in fault_candidates(tmp_path, "c")} == {"src/lib.c", "src/unused.c", "src/lib.h"}


MINI_C = {
    "mini.c": "#include \"mini.h\"\n\nint clamp_max(int a, int b) {\n    return a < b ? b : a;\n}\n\n"
              "int is_zero(int a) {\n    return a == 0;\n}\n",
    "mini.h": "int clamp_max(int a, int b);\nint is_zero(int a);\n",
    "test_max.c": "#include \"mini.h\"\nint main(void) { return clamp_max(2, 3) == 3 && clamp_max(5, 1) == 5 ? 0 : 1; }\n",
    "test_zero.c": "#include \"mini.h\"\nint main(void) { return is_zero(0) && !is_zero(7) ? 0 : 1; }\n",
    # an automake-style harness: one PASS:/FAIL: line per test program
    "Makefile": ".SECONDARY:\n\nall: test_max test_zero\n\n"
                "test_%: test_%.o mini.o\n\tgcc -o $@ $^\n\n"
                "%.o: %.c mini.h\n\tgcc -c -o $@ $<\n\n"
                "check: all\n\t@fail=0; for t in test_max test_zero; do if ./$$t; then echo \"PASS: $$t\"; "
                "else echo \"FAIL: $$t\"; fail=1; fi; done; exit $$fail\n",
}


def _build_one(entry, out) -> dict:
    """Build a corpus of one project; its tasks by id, from every split."""
    from tasks import load_tasks
    from tasks.build import build_corpus

    outcomes = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not outcomes[0].excluded, outcomes[0].excluded
    return {t.id: t for s in ("train", "validation", "test") for t in
            (load_tasks(str(out), s) if (out / f"{s}.jsonl").read_text() else [])}


def _assert_fault_tasks(tasks: dict, want: dict[str, tuple[str, str]]) -> None:
    """One fault task per operator in `want`, each failing with its test in the ground truth and the
    injected file:line recorded as metadata (the test output does not show it: no cause fact)."""
    assert {i.split("~")[1] for i in tasks} == set(want)
    for t in tasks.values():
        facts = {f.kind: f.value for f in t.ground_truth.facts}
        test, where = want[t.id.split("~")[1]]
        mutation = t.ground_truth.observed["mutation"]
        assert t.ground_truth.exit_status != 0
        assert facts["failing_test"] == f"{test} fails" and f"{mutation['file'].rsplit('/', 1)[-1]}:{mutation['line']}" == where
        assert "cause" not in facts and where not in t.reference.report


def test_real_builder_builds_a_c_project_and_injects_faults(tmp_path):
    """A local C project end to end: built by its setup in the sandbox, a clean run_tests task, and
    fault tasks (rebuilt incrementally from the built tree) whose failing test and file:line are in the
    ground truth."""
    from tasks.manifest import Entry

    proj = tmp_path / "minic"
    proj.mkdir()
    for name, text in MINI_C.items():
        (proj / name).write_text(text)
    entry = Entry("minic", "local", "0", "c", "make check", setup=("make",), runner="automake", path=str(proj))
    out = tmp_path / "corpus"
    tasks = _build_one(entry, out)
    clean = tasks.pop("local-minic")
    assert clean.ground_truth.exit_status == 0 and clean.setup == ["make"]
    assert clean.ground_truth.observed["tests"] == {"test_max": "PASS", "test_zero": "PASS"}
    _assert_fault_tasks(tasks, {"flip_eq": ("test_zero", "mini.c:8"), "flip_lt": ("test_max", "mini.c:4")})
    for t in tasks.values():
        assert not list((out / t.repo_dir).glob("*.o"))   # the task's snapshot is the clean source


MINI_JAVA = {
    "src/main/java/mini/Calc.java":
        "package mini;\n\npublic final class Calc {\n"
        "    public static int max(int a, int b) {\n        return a < b ? b : a;\n    }\n\n"
        "    public static boolean isZero(int x) {\n        return x == 0;\n    }\n}\n",
    "src/test/java/mini/CalcTest.java":
        "package mini;\n\nimport static org.junit.jupiter.api.Assertions.*;\n\nimport org.junit.jupiter.api.Test;\n\n"
        "class CalcTest {\n    @Test\n    void max() {\n        assertEquals(3, Calc.max(2, 3));\n    }\n\n"
        "    @Test\n    void isZero() {\n        assertTrue(Calc.isZero(0));\n    }\n}\n",
    # a test of a library Debian does not package: left out of the build by the manifest's command
    "src/test/java/mini/MockedTest.java": "package mini;\n\nimport org.mockito.Mockito;\n\nclass MockedTest {}\n",
}


def test_real_builder_builds_a_java_project_with_the_manifests_commands(tmp_path):
    """A local Maven-layout Java project built and tested with the commands the committed manifest
    uses for its Debian Java projects (javac, the JUnit console launcher): a clean task and fault
    tasks whose failing test and file:line are in the ground truth."""
    from pathlib import Path

    import tasks as tasks_pkg

    if not Path("/usr/share/java/junit-platform-console-standalone.jar").exists():
        pytest.skip("Debian's junit5 is not installed (scripts/install.sh installs it when run as root)")
    java = [e for e in load_manifest(Path(tasks_pkg.__file__).parent / "manifests" / "default.jsonl")[0]
            if e.language == "java"]
    assert java, "the committed manifest has no Java project"
    proj = tmp_path / "minijava"
    for name, text in MINI_JAVA.items():
        (proj / name).parent.mkdir(parents=True, exist_ok=True)
        (proj / name).write_text(text)
    entry = dataclasses.replace(java[0], name="minijava", ecosystem="local", version="0", path=str(proj))
    out = tmp_path / "corpus"
    tasks = _build_one(entry, out)
    clean = tasks.pop("local-minijava")
    assert clean.ground_truth.exit_status == 0
    assert clean.ground_truth.observed["tests"] == {"CalcTest::max": "PASS", "CalcTest::isZero": "PASS"}
    _assert_fault_tasks(tasks, {"flip_eq": ("isZero", "Calc.java:9"), "flip_lt": ("max", "Calc.java:5")})
    for t in tasks.values():
        assert not (out / t.repo_dir / "build").exists()   # the task's snapshot is the clean source


def test_a_run_may_hide_failing_tests_by_what_its_capped_output_shows():
    """The reference reruns the tests filtered to their failure lines when what the agent saw of a
    failing run may hide failing names: cut, fewer than five shown, no printed total saying those
    are all. It is decided from what was seen (two tasks whose runs read the same go on alike)."""
    from tasks.runs import Run, hides_failures
    head = "".join(f"test_a{i:03} (t.T.test_a{i:03}) ... ok\n" for i in range(100))
    results = {f"test_a{i:03}": "ok" for i in range(100)} | {"test_z1": "FAIL", "test_z2": "FAIL"}

    def run(tail, code=1):
        return Run("python3 -m unittest -v", head + tail, code)
    one_shown = "test_z2 (t.T.test_z2) ... FAIL\n\nRan 102 tests in 0.1s\n\n"
    assert hides_failures(run(one_shown + "FAILED (failures=2)\n"), results, "unittest", 1024)   # 1 of 2 shown
    assert hides_failures(run(one_shown), results, "unittest", 1024)                             # no total shown
    assert not hides_failures(run(one_shown + "FAILED (failures=1)\n"), results, "unittest", 1024)   # all shown
    assert not hides_failures(run(one_shown + "FAILED (failures=2)\n", 0), results, "unittest", 1024)   # it passed
    assert not hides_failures(run(one_shown + "FAILED (failures=2)\n"), results, "unittest", 1 << 20)   # not cut
    # a run whose output shows no failing name at all, cut (loguru's INTERNALERROR): it may hide them
    assert hides_failures(run("INTERNALERROR> TypeError: x\n"), {"test_a000": "ok"}, "unittest", 1024)
