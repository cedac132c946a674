"""Task kinds beyond the test suite on local fixture projects: a TypeScript project (typescript from
the npm registry, installed into the project's tree at build time), a C project's build broken
by a syntax edit whose compiler error names file:line, and Python projects installed offline from
the wheelhouse the build made (as released, and with a requirement no wheel satisfies) and whose
programs are run from the source. Every task replays through episodes."""
import asyncio
import dataclasses
import json
import os
import shutil

import pytest

from sandbox.config import SandboxConfig
from tasks import kinds, load_tasks
from tasks.build import build_corpus
from tasks.manifest import Entry
from evaluation.validate import validate_tasks

pytestmark = pytest.mark.timeout(600)

MINI_TS = {
    "package.json": '{"name": "minits", "version": "0.0.0", "devDependencies": {"typescript": "5.4.5"},\n'
                    ' "scripts": {"test": "tsc && node --test test/"}}\n',
    "tsconfig.json": '{"compilerOptions": {"target": "ES2020", "module": "commonjs", "strict": true, "types": [],\n'
                     ' "rootDir": "src", "outDir": "dist"}, "include": ["src"]}\n',
    "src/calc.ts": "export function clampMax(a: number, b: number): number {\n  return a < b ? b : a;\n}\n\n"
                   "export function label(n: number): string {\n  return String(n).padStart(3, \" \");\n}\n",
    "test/calc.test.js": "const test = require('node:test');\nconst assert = require('node:assert');\n"
                         "const { clampMax, label } = require('../dist/calc.js');\n"
                         "test('clampMax picks the larger', () => assert.strictEqual(clampMax(2, 3), 3));\n"
                         "test('label pads to three', () => assert.strictEqual(label(7), '  7'));\n",
}
# tests written in TypeScript that run compiled (dist/test/*.js): the builder finds the build step
# (`npm run build`) and runs it before the tests, in the build and in every episode. The test file
# uses `require` with no @types/node installed, a type error (TS2580) after which tsc still emits.
BUILT_TS = {
    "package.json": '{"name": "builtts", "version": "0.0.0", "devDependencies": {"typescript": "5.4.5"},\n'
                    ' "scripts": {"build": "tsc", "test": "npm run build && node --test"}}\n',
    "tsconfig.json": '{"compilerOptions": {"target": "ES2020", "module": "commonjs", "strict": true, "types": [],\n'
                     ' "rootDir": ".", "outDir": "dist"}, "include": ["src", "test"]}\n',
    "src/calc.ts": MINI_TS["src/calc.ts"],
    "test/calc.test.ts": "const test = require('node:test');\nconst assert = require('node:assert');\n"
                         "import { clampMax, label } from '../src/calc';\n"
                         "test('clampMax picks the larger', () => assert.strictEqual(clampMax(2, 3), 3));\n"
                         "test('label pads to three', () => assert.strictEqual(label(7), '  7'));\n",
}
MINI_C = {
    "mini.c": "#include \"mini.h\"\n\nint add(int a, int b) {\n    return a + b;\n}\n\n"
              "int twice(int a) {\n    return add(a, a);\n}\n",
    "mini.h": "int add(int a, int b);\nint twice(int a);\n",
    "test_twice.c": "#include \"mini.h\"\nint main(void) { return twice(4) == 8 ? 0 : 1; }\n",
    "Makefile": "all: test_twice\n\ntest_twice: test_twice.o mini.o\n\tgcc -o $@ $^\n\n%.o: %.c mini.h\n\tgcc -c -o $@ $<\n\n"
                "check: all\n\t@if ./test_twice; then echo 'PASS: test_twice'; else echo 'FAIL: test_twice'; exit 1; fi\n",
}

# a Java library packaged for Debian with maven-debian-helper, as the paper manifest's Java projects are:
# built by its own Maven build, offline, as Debian builds it (tasks.real.uses_debian_packaging)
MAVEN_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mini</groupId>
  <artifactId>minicalc</artifactId>
  <version>1.0</version>
  <dependencies>
    <dependency><groupId>junit</groupId><artifactId>junit</artifactId><version>4.13.2</version><scope>test</scope></dependency>
  </dependencies>
</project>
"""
MINI_MAVEN = {
    "pom.xml": MAVEN_POM,
    "src/main/java/mini/Calc.java":
        "package mini;\n\npublic final class Calc {\n    public static int max(int a, int b) {\n        check(a);\n"
        "        return a < b ? b : a;\n    }\n\n    public static boolean isZero(int x) {\n        return x == 0;\n    }\n\n"
        "    private static void check(int x) {\n    }\n}\n",
    "src/test/java/mini/CalcTest.java":
        "package mini;\n\nimport static org.junit.Assert.*;\n\nimport org.junit.Test;\n\npublic class CalcTest {\n"
        "    @Test\n    public void max() {\n        assertEquals(3, Calc.max(2, 3));\n    }\n\n"
        "    @Test\n    public void isZero() {\n        assertTrue(Calc.isZero(0));\n    }\n}\n",
    "debian/control": "Source: minicalc\nSection: java\nPriority: optional\nMaintainer: Nobody <nobody@example.org>\n"
                      "Build-Depends: debhelper-compat (= 13), default-jdk, junit4, maven-debian-helper (>= 2.0)\n"
                      "Build-Depends-Indep: default-jdk-doc\n\n"
                      "Package: libminicalc-java\nArchitecture: all\nDepends: ${misc:Depends}, ${maven:Depends}\n"
                      "Description: a calculator\n two functions and their tests\n",
    "debian/changelog": "minicalc (1.0-1) unstable; urgency=medium\n\n  * Initial release.\n\n"
                        " -- Nobody <nobody@example.org>  Sun, 06 Dec 2026 12:00:00 +0000\n",
    "debian/rules": "#!/usr/bin/make -f\n\n%:\n\tdh $@\n",
    "debian/libminicalc-java.poms": "pom.xml --no-parent --java-lib\n",
    "debian/maven.rules": "junit junit jar s/4\\..*/4.x/ * *\n",
    "debian/maven.properties": "maven.compiler.release=11\n",
}


def _write(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(root)


def _tasks(out):
    return [t for s in ("train", "validation", "test") if (out / f"{s}.jsonl").read_text() for t in load_tasks(str(out), s)]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_a_typescript_project_builds_tests_faults_and_type_checks(tmp_path, tok):
    entry = Entry("minits", "local", "0", "typescript", "npm test", runner="tap", path=_write(tmp_path / "minits", MINI_TS))
    out = tmp_path / "corpus"
    [o] = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not o.excluded, o.excluded
    tasks = _tasks(out)
    kinds = {t.category for t in tasks}
    assert {"build"} <= kinds and kinds & {"run_tests", "discover_tests"}
    fault = next(t for t in tasks if "flip_lt" in t.id)
    assert any(f.value == "clampMax picks the larger fails" for f in fault.ground_truth.facts)
    build = next(t for t in tasks if t.category == "build")
    # the compiler's error, then a look at the lines around it, which the report cites
    assert build.reference.commands == ["npx --no-install tsc --noEmit --pretty false",
                                        "grep -Hn '' src/calc.ts | sed -n '3,9p'"]
    facts = {f.kind: f.value for f in build.ground_truth.facts}
    assert facts["error_message"].startswith("TS1005") and facts["error_location"] == "calc.ts:6"
    assert facts["failing_line"].startswith("the failing line src/calc.ts:6 reads ")
    assert all(t.environment.ro_binds == ["shared/local-minits/node_modules:node_modules".replace(
        "shared", str(out / "shared"), 1)] for t in tasks)   # typescript, installed once, bound read-only
    checks = asyncio.run(validate_tasks(tasks, SandboxConfig(), tok))
    assert all(c.ok for c in checks), [(c.task_id, c.problems) for c in checks if not c.ok]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_typescript_tests_that_run_compiled_are_built_first_in_the_build_and_in_episodes(tmp_path, tok):
    entry = Entry("builtts", "local", "0", "typescript", "auto", path=_write(tmp_path / "builtts", BUILT_TS))
    out = tmp_path / "corpus"
    [o] = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not o.excluded, o.excluded   # without the build step `node --test` finds no compiled test
    tasks = _tasks(out)
    assert all(t.setup == ["npm run build || [ $? -eq 2 ]"] for t in tasks if t.category != "build")
    clean = next(t for t in tasks if t.id == "local-builtts")
    assert any(f.value == "all 2 TAP assertions pass" for f in clean.ground_truth.facts)
    assert not (out / "repos" / "local-builtts" / "dist").exists()   # the source as released: episodes build it
    fault = next(t for t in tasks if "flip_lt" in t.id)   # a fault in the TypeScript source, caught after the build
    assert any(f.value == "clampMax picks the larger fails" for f in fault.ground_truth.facts)
    checks = asyncio.run(validate_tasks(tasks, SandboxConfig(), tok))   # offline, node_modules read-only
    assert all(c.ok for c in checks), [(c.task_id, c.problems) for c in checks if not c.ok]


def test_a_typescript_build_step_that_fails_is_left_out_when_the_tests_run_without_it(tmp_path):
    files = {"package.json": '{"name": "nobuild", "version": "0.0.0", "scripts": {"build": "tsc", "test": "node --test"}}',
             "src/a.ts": "export const one: number = 1;\n",   # no typescript installed: `npm run build` fails
             "test/a.test.js": "const test = require('node:test');\ntest('runs as shipped', () => {});\n"}
    entry = Entry("nobuild", "local", "0", "typescript", "auto", path=_write(tmp_path / "nobuild", files))
    out = tmp_path / "corpus"
    [o] = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not o.excluded, o.excluded
    assert o.tasks and all(t.setup == [] for t in o.tasks)


def test_a_c_build_broken_by_a_syntax_edit_names_the_compilers_first_error(tmp_path, tok):
    entry = Entry("minic", "local", "0", "c", "make check", setup=("make",), runner="automake",
                  path=_write(tmp_path / "minic", MINI_C))
    out = tmp_path / "corpus"
    [o] = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not o.excluded, o.excluded
    tasks = _tasks(out)
    build = next(t for t in tasks if t.category == "build")
    # the agent builds it, then looks at the lines the compiler's error points to
    assert build.setup == [] and build.reference.commands == ["make", "grep -Hn '' mini.c | sed -n '5,11p'"]
    mutation = build.ground_truth.observed["mutation"]
    assert (mutation["file"], mutation["line"]) == ("mini.c", 8)
    facts = {f.kind: f.value for f in build.ground_truth.facts}
    assert facts["error_location"] == "mini.c:8" and "expected" in facts["error_message"]
    assert facts["failing_line"] == "the failing line mini.c:8 reads `return add(a, a;`"
    assert facts["cause"] == "cause: a closing parenthesis is missing in mini.c:8"
    assert not any(t.category == "run_one_test" for t in tasks)   # this harness ignores TESTS=: no such task
    checks = asyncio.run(validate_tasks(tasks, SandboxConfig(), tok))
    assert all(c.ok for c in checks), [(c.task_id, c.problems) for c in checks if not c.ok]


@pytest.mark.skipif(shutil.which("dh_auto_configure") is None or not os.path.isdir(
    "/usr/share/maven-repo/org/apache/maven/plugins/maven-surefire-plugin"),
    reason="maven-debian-helper and Maven's plugins are not installed (scripts/install.sh installs them as root)")
def test_a_java_project_is_built_and_tested_by_its_debian_maven_packaging(tmp_path, tok):
    """The paper manifest's Java recipe on a local Debian-packaged library: Maven offline against
    Debian's repository, Surefire's per-test lines, fault tasks, one test by name, a build broken by
    a syntax edit whose Maven compiler error names file:line; the Build-Depends recorded in every
    task's environment. Every task replays through episodes."""
    from pathlib import Path

    import tasks as tasks_pkg
    from tasks.manifest import load_manifest
    paper = next(e for e in load_manifest(Path(tasks_pkg.__file__).parent / "manifests" / "paper.jsonl")[0]
                 if e.language == "java")
    entry = dataclasses.replace(paper, name="minicalc", ecosystem="local", version="0",
                                path=_write(tmp_path / "minicalc", MINI_MAVEN))
    out = tmp_path / "corpus"
    [o] = build_corpus([entry], out, jobs=1, progress=lambda s: None)
    assert not o.excluded, o.excluded
    tasks = {t.id: t for t in _tasks(out)}
    clean = tasks["local-minicalc"]
    assert clean.ground_truth.exit_status == 0
    assert clean.ground_truth.observed["tests"] == {"CalcTest::max": "PASS", "CalcTest::isZero": "PASS"}
    flip = next(t for i, t in tasks.items() if "~flip_eq~" in i)
    facts = {f.kind: f for f in flip.ground_truth.facts}
    assert facts["failing_test"].value == "isZero fails" and flip.ground_truth.exit_status != 0
    assert facts["counts"].evidence == ["Tests run: 2, Failures: 1, Errors: 0, Skipped: 0"]   # Surefire's totals
    one = next(t for t in tasks.values() if t.category == "run_one_test")
    assert one.reference.commands[0].endswith(" -Dtest=CalcTest#" + one.ground_truth.facts[0].value.split()[0])
    build = next(t for t in tasks.values() if t.category == "build")
    facts = {f.kind: f.value for f in build.ground_truth.facts}
    assert facts["error_location"] == "Calc.java:5" and "expected" in facts["error_message"]   # check(a; -> ')' expected
    # the JDK without its GUI, no javadoc packages: what the build checked and every sandbox checks again
    assert all(t.environment.debian_packages == "debhelper-compat (= 13), default-jdk-headless, junit4, "
               "maven-debian-helper (>= 2.0)" for t in tasks.values())
    checks = asyncio.run(validate_tasks(list(tasks.values()), SandboxConfig(), tok))
    assert all(c.ok for c in checks), [(c.task_id, c.problems) for c in checks if not c.ok]


def test_build_depends_are_read_from_the_packaging_as_one_dependency_string(tmp_path):
    """Folded fields, alternatives and versions kept as Debian wrote them (dpkg-checkbuilddeps and apt-get
    satisfy read them), -Indep and -Arch added, the JDK without its GUI, no documentation packages; and
    whether the packaging turns the tests off, which sends the build to javac."""
    from tasks.real import build_depends, debian_skips_tests
    (tmp_path / "debian").mkdir()
    (tmp_path / "debian" / "control").write_text(
        "Source: x\nBuild-Depends: debhelper-compat (= 13),\n default-jdk,\n libfoo-java (>= 2.1) | libfoo2-java,\n"
        "Build-Depends-Indep: default-jdk-doc, libbar-java\nStandards-Version: 4.6.2\n\n"
        "Package: libx-java\nBuild-Depends: not-the-source-stanza\n")
    assert build_depends(tmp_path) == ("debhelper-compat (= 13), default-jdk-headless, libfoo-java (>= 2.1) | "
                                       "libfoo2-java, libbar-java")
    assert not debian_skips_tests(tmp_path)
    (tmp_path / "debian" / "maven.properties").write_text("# tests need jmh\nmaven.test.skip=true\n")
    assert debian_skips_tests(tmp_path)


@pytest.mark.skipif(shutil.which("dpkg-checkbuilddeps") is None, reason="Debian's dpkg-dev is not installed")
def test_a_task_whose_debian_packages_are_missing_says_what_to_install(tmp_path):
    """A task's environment names the Debian packages its commands need: a sandbox on a machine
    without them is refused with the apt-get command that installs them, before anything runs."""
    from core.errors import UserError
    from tasks.types import TaskEnvironment, unmet_debian_packages
    assert unmet_debian_packages("dpkg") == ""
    env = TaskEnvironment(debian_packages="dpkg, terminus-no-such-package (>= 1.0)")
    with pytest.raises(UserError, match=r"apt-get satisfy 'terminus-no-such-package \(>= 1.0\)'"):
        asyncio.run(env.open_sandbox(SandboxConfig(), str(tmp_path)))


# a console script with --version, a runtime requirement (tomli_w) the wheelhouse holds
MINI_CLI = {
    "pyproject.toml": '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
                      '[project]\nname = "minicli"\nversion = "1.4.2"\ndependencies = ["tomli_w>=1.0"]\n\n'
                      '[project.scripts]\nminicli = "minicli.cli:main"\n',
    "minicli/__init__.py": '__version__ = "1.4.2"\n',
    "minicli/cli.py": "import argparse\n\nimport tomli_w\n\nfrom minicli import __version__\n\n\n"
                      "def main(argv=None):\n    p = argparse.ArgumentParser()\n"
                      "    p.add_argument('--version', action='version', version=f'%(prog)s {__version__}')\n"
                      "    p.add_argument('key')\n    print(tomli_w.dumps({p.parse_args(argv).key: 1}), end='')\n"
                      "    return 0\n",
    "tests/test_cli.py": "from minicli.cli import main\n\n\ndef test_main(capsys):\n"
                         "    assert main(['a']) == 0 and capsys.readouterr().out == 'a = 1\\n'\n",
}
# a src layout, no requirement, a __main__ module with --help only (its --version is an error)
MINI_MAIN = {
    "setup.cfg": "[metadata]\nname = minimain\nversion = 0.3\n\n[options]\npackage_dir =\n    = src\n"
                 "packages = find:\n\n[options.packages.find]\nwhere = src\n",
    "setup.py": "from setuptools import setup\nsetup()\n",
    "src/minimain/__init__.py": "",
    "src/minimain/__main__.py": "import argparse\n\np = argparse.ArgumentParser(prog='minimain')\n"
                                "p.add_argument('words', nargs='*')\nprint(' '.join(p.parse_args().words))\n",
    "tests/test_main.py": "import subprocess\nimport sys\n\n\ndef test_echo():\n"
                          "    r = subprocess.run([sys.executable, '-m', 'minimain', 'a', 'b'], capture_output=True, text=True,\n"
                          "                       env={'PYTHONPATH': 'src'})\n    assert r.stdout == 'a b\\n'\n",
}


@pytest.fixture(scope="module")
def python_corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pykinds")
    cmd = "python3 -m pytest -v -p no:cacheprovider"
    entries = [Entry("minicli", "local", "0", "python", cmd, runner="pytest", path=_write(tmp / "minicli", MINI_CLI)),
               Entry("minimain", "local", "0", "python", cmd, runner="pytest", path=_write(tmp / "minimain", MINI_MAIN))]
    out = tmp / "corpus"
    outcomes = build_corpus(entries, out, jobs=2, progress=lambda s: None)
    assert not [(o.excluded, o.no_wheelhouse) for o in outcomes if o.excluded or o.no_wheelhouse]
    return out, {t.id: t for t in _tasks(out)}


def test_a_python_project_installs_offline_and_a_pinned_requirement_no_wheel_has_fails(python_corpus):
    out, tasks = python_corpus
    clean, fault = tasks["local-minicli~install"], tasks["local-minicli~install~unsatisfiable"]
    assert clean.category == fault.category == "install"
    cmd = "python3 -m pip install --no-index --find-links /opt/wheels --target /tmp/site ."
    assert clean.reference.commands == [cmd] and clean.ground_truth.exit_status == 0
    facts = {f.kind: f.value for f in clean.ground_truth.facts}
    assert facts["counts"] == "2 packages installed: minicli-1.4.2, tomli_w-" + facts["counts"].split("tomli_w-")[1]
    # the wheelhouse holds the dependency and the build backend, never the project's own wheel
    [bind] = [b for b in clean.environment.ro_binds if b.endswith(":/opt/wheels")]
    wheels = sorted(p.name.split("-")[0] for p in (out / bind.split(":")[0]).glob("*.whl"))
    assert "tomli_w" in wheels and "setuptools" in wheels and "minicli" not in wheels
    # the fault: pip names the requirement; a grep of the metadata shows where it is pinned
    assert fault.ground_truth.exit_status == 1
    assert fault.reference.commands[1].startswith("grep -rnF tomli_w==999.0 ")
    facts = {f.kind: f.value for f in fault.ground_truth.facts}
    assert facts["failing_requirement"] == "no distribution satisfies the requirement tomli_w==999.0"
    assert facts["cause"] == "cause: the requirement tomli_w is pinned to a version that does not exist (999.0) in pyproject.toml:8"
    assert fault.ground_truth.observed["mutation"]["file"] == "pyproject.toml"
    assert "local-minimain~install" in tasks and "local-minimain~install~unsatisfiable" not in tasks   # nothing to pin


def test_a_python_projects_program_runs_from_the_source_and_reports_its_version_or_usage(python_corpus):
    _, tasks = python_corpus
    cli, main = tasks["local-minicli~script"], tasks["local-minimain~script"]
    assert cli.category == main.category == "run_script"
    # the console script as pip's wrapper runs it; its --version exits 0
    assert cli.reference.commands == ["""python3 -c 'import sys; sys.argv[0] = "minicli"; from minicli.cli import main; """
                                      """sys.exit(main())' --version"""]
    assert {f.kind: f.value for f in cli.ground_truth.facts}["version"] == "it reports version 1.4.2"
    # the __main__ module of a src layout: no --version (argparse exits 2), so --help
    assert main.reference.commands == ["PYTHONPATH=src python3 -m minimain --help"]
    assert {f.kind: f.value for f in main.ground_truth.facts}["usage"] == "its usage line names the program minimain"
    for t in (cli, main):
        assert t.environment.ro_binds[0].endswith(":/opt/venv") and not any("/opt/wheels" in b for b in t.environment.ro_binds)


def test_install_and_run_script_tasks_replay_through_episodes(python_corpus, tok):
    out, tasks = python_corpus
    summary = json.loads((out / "corpus.json").read_text())
    assert summary["by_category"]["install"] == 3 and summary["by_category"]["run_script"] == 2
    chosen = [t for t in tasks.values() if t.category in ("install", "run_script")]
    assert sum(kinds.asks_goal(t.id) for t in chosen) and not all(kinds.asks_goal(t.id) for t in chosen)
    checks = asyncio.run(validate_tasks(chosen, SandboxConfig(), tok, teacher_tasks=list(tasks.values())))
    assert all(c.ok for c in checks), [(c.task_id, c.problems) for c in checks if not c.ok]


def test_the_install_fault_pins_a_runtime_requirement_where_the_metadata_writes_it(tmp_path):
    from tasks.kinds import unsatisfiable
    cfg = "[options]\ninstall_requires =\n    attrs>=20\n    Tomli_W ; python_version<'4'\n\n[options.extras_require]\ntest =\n    zz\n"
    (tmp_path / "setup.cfg").write_text(cfg)
    m = unsatisfiable(tmp_path, ("tomli-w; python_version < \"4\"",))   # as the wheel's METADATA normalizes it
    assert (m.file, m.old, m.new) == ("setup.cfg", "    Tomli_W ; python_version<'4'", "    Tomli_W==999.0")
    (tmp_path / "setup.cfg").unlink()
    (tmp_path / "setup.py").write_text("setup(install_requires=['tomli_wx', \"tomli-w[x]>=1 ; sys_platform=='linux'\"])\n")
    m = unsatisfiable(tmp_path, ("tomli-w[x]>=1",))
    assert (m.file, m.old, m.new) == ("setup.py", "\"tomli-w[x]>=1 ; sys_platform=='linux'\"", '"tomli-w==999.0"')
    assert unsatisfiable(tmp_path, ("zz",)) is None   # not written in the metadata: no fault


def test_a_shared_tree_whose_marker_was_cut_short_is_built_again(tmp_path, monkeypatch):
    """A cache left by a build killed while writing its COMPLETE marker (an empty file) is rebuilt,
    not read as a record (CI's persistent cache once held one: 'Expecting value' for every project);
    a whole one is reused, and the corpus's copy follows the cache's record."""
    from tasks.real import shared_build
    monkeypatch.setenv("TERMINUS_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(d):
        d.mkdir(parents=True)
        (d / "payload").write_text(str(len(builds)))
        builds.append(d)
        return {"built": len(builds)}
    stale = tmp_path / "cache" / "venvs" / "k1"
    stale.mkdir(parents=True)
    (stale / "COMPLETE").write_text("")
    out = tmp_path / "corpus"
    assert shared_build("venvs", "k1", out, build) == ("shared/venvs/k1", {"built": 1})
    assert shared_build("venvs", "k1", out, build) == ("shared/venvs/k1", {"built": 1})
    assert len(builds) == 1 and (out / "shared/venvs/k1/payload").read_text() == "0"
    assert json.loads((out / "shared/venvs/k1/COMPLETE").read_text()) == {"built": 1}
