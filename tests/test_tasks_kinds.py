"""Task kinds beyond the test suite on local fixture projects: a TypeScript project (typescript from
the npm registry, installed into the project's tree at build time), and a C project's build broken
by a syntax edit whose compiler error names file:line. Every task replays through episodes."""
import asyncio
import shutil

import pytest

from sandbox.config import SandboxConfig
from tasks import load_tasks
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
