"""Task kinds of a real project beyond its test suite (tasks/real.py makes run_tests and
discover_tests): each with ground truth by execution in the project's sandbox, a reference solution,
request phrasings (half of them goals that name no command), and only facts the output shows.

    run_one_test  one failing test of a fault task, run by name (pytest node id, unittest's dotted
                  name, ctest -R, automake TESTS=)
    build         the project's build (its setup; Python: compileall; TypeScript: tsc) after a
                  syntax-breaking edit; the report names the compiler's first error and file:line
    lint          pyflakes on a Python project as released; the report gives the count and the first
                  findings with file:line
Each kind's task is made once per project, when the project's tools allow it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import shutil
from pathlib import Path

from tasks.builtin import Mutation, apply_mutation
from tasks.groundtruth import build_facts, location_fact, python_traceback_facts
from tasks.manifest import Entry, check_project
from tasks.runs import (Run, cause_fact, copy_source, failed, look_at_failure, make_task, mutation_record, result_facts,
                        run_commands, short_name, task_id)
from tasks.types import Fact, Task, TaskEnvironment

KINDS = ("run_tests", "discover_tests", "run_one_test", "build", "lint")


def _hash(tid: str) -> int:
    return int(hashlib.sha256(tid.encode()).hexdigest(), 16)


def asks_goal(tid: str) -> bool:
    """Whether task `tid`'s request states a goal that names no command: half the tasks, by a hash."""
    return _hash(tid) % 2 == 1


def phrasing(tid: str, options: tuple[str, ...], **names) -> str:
    """One of `options` for task `tid`, stable (a hash of the id), with `names` filled in."""
    return options[_hash(tid) // 2 % len(options)].format(**names)


def _pick(tid: str, goal: tuple[str, ...], direct: tuple[str, ...], **names) -> str:
    """A request for task `tid`: a goal (no command) for half the tasks, a direct command for the rest."""
    return phrasing(tid, goal if asks_goal(tid) else direct, **names)


# ---- run_one_test ---------------------------------------------------------------------------------

def single_test_command(entry: Entry, test_id: str, output: str) -> str:
    """The command that runs only `test_id` ('' when the runner cannot select one test)."""
    cmd = entry.test_command
    if entry.runner == "pytest":
        return f"{cmd} {shlex.quote(test_id)}"
    if entry.runner == "unittest" and re.search(r"-m unittest( -v)?$", cmd):
        # `python -m unittest -v` prints "test_x (module.Class.test_x) ... FAIL": the dotted name selects it
        m = re.search(rf"^{re.escape(test_id)} \(([\w.]+)\) \.\.\.", output, re.MULTILINE)
        dotted = m.group(1) if m else ""
        return f"{cmd} {dotted if dotted.endswith(test_id) else dotted + '.' + test_id}" if dotted else ""
    if entry.runner == "ctest":
        return f"{cmd} -R {shlex.quote('^' + re.escape(test_id) + '$')}"
    if entry.runner == "automake" and re.fullmatch(r"[\w.-]+", test_id):
        return f"{cmd} TESTS={test_id}"
    return ""


ONE_TEST_GOALS = ("Run only the test {test} of {name} and tell me whether it passes, and why not if it fails.",
                  "Just check {test} in {name}: does it pass? If not, what is the error?")
ONE_TEST_DIRECT = ("Run `{cmd}` and tell me whether that test passes, and why not if it fails.",
                   "Please run the single test with `{cmd}` and report the result.")


async def one_test_task(entry: Entry, tid: str, run_dir: str, repo: str, snapshot: str, fault_check,
                        env: TaskEnvironment, build_env: TaskEnvironment, sandbox_cfg, timeout_s: float, cap: int,
                        dropped: dict, mutation: dict) -> Task | None:
    """A run_one_test task on a fault task's tree (`run_dir` to run in, `snapshot` the task's source,
    `repo` its path in the corpus): its first failing test, run alone (twice alike), then a look at
    the source line its failure points to."""

    failing = sorted(t for t, s in fault_check.results[0].items() if failed(s))
    cmd = single_test_command(entry, failing[0], fault_check.outputs[0]) if failing else ""
    if not cmd:
        return None
    chk = await check_project(run_dir, dataclasses.replace(entry, test_command=cmd), sandbox_cfg,
                              timeout_s=timeout_s, setup_timeout_s=300, environment=build_env)
    if chk.verdict != "runs" or list(chk.results[0]) != [failing[0]] or not failed(chk.results[0][failing[0]]):
        return None   # the command did not select that one test (a harness that ignores TESTS=), or it passed
    output, code = chk.outputs[0], chk.exit_codes[0]
    facts = result_facts(chk.results[0], entry.runner, output)
    facts = [f for f in facts if f.kind != "counts"] + python_traceback_facts(output)[:1]   # the error type
    request = _pick(tid, ONE_TEST_GOALS, ONE_TEST_DIRECT, test=short_name(failing[0], entry.runner),
                    name=entry.name, cmd=cmd)
    run = Run(cmd, output, code)
    looks = await look_at_failure(sandbox_cfg, snapshot, build_env, run, cap)
    return make_task(entry, tid, "run_one_test", request, [run], facts + [cause_fact(mutation)], env, repo,
                     entry.setup, cap, dropped, {"tests": chk.results[0], "mutation": mutation}, looks)


# ---- build ----------------------------------------------------------------------------------------

# a statement that calls something: dropping its last ')' is a syntax error in every C-like language
_CALL_STATEMENT = re.compile(r"^\s+[^#/*\s].*\w\(.*\)\s*;\s*$")
_PY_DEF = re.compile(r"^\s*def \w+\(.*\):\s*$")
BUILD_GOALS = ("Build {name} and tell me whether it compiles; if not, what is the first error and where?",
               "Does {name} build? Give me the first compiler error with its file and line, if any.")
BUILD_DIRECT = ("Run `{cmd}` and summarize the compiler errors, if any.",
                "Please build the project with `{cmd}` and report the first error (file and line).")


def build_commands(entry: Entry) -> list[str]:
    """How the project is built: its setup (C, C++, Java), byte-compiling (Python), tsc (TypeScript)."""
    if entry.language == "python":
        return ["python3 -m compileall -q ."]
    if entry.language == "typescript":
        return ["npx --no-install tsc --noEmit --pretty false"]
    return list(entry.setup)


def syntax_break(root: Path, language: str, sources: list[Path]) -> Mutation | None:
    """The first source line whose edit breaks the syntax: a Python def without its colon, a C-like
    call statement without its last ')'."""
    for path in sources:
        text = path.read_text(errors="replace")
        for line in text.splitlines():
            if text.count(line) != 1:
                continue
            if language == "python" and _PY_DEF.match(line):
                return Mutation("break_syntax", str(path.relative_to(root)), line, line.rstrip()[:-1],
                                "a colon is missing after a def")
            if language != "python" and _CALL_STATEMENT.match(line):
                i = line.rindex(")")
                return Mutation("break_syntax", str(path.relative_to(root)), line, line[:i] + line[i + 1:],
                                "a closing parenthesis is missing")
    return None


def build_error_facts(output: str) -> list[Fact]:
    """The first compiler error and its file:line (gcc, g++, javac, tsc), or Python's SyntaxError."""
    return build_facts(output) or [f for f in python_traceback_facts(output) if f.kind in ("error_message",
                                                                                          "error_location")]


async def build_task(entry: Entry, root: Path, out: Path, base: str, env: TaskEnvironment,
                     build_env: TaskEnvironment, sandbox_cfg, sources: list[Path], cap: int,
                     dropped: dict) -> Task | None:
    """A build task: the project as released builds (checked), the task's copy has a syntax-breaking
    edit, and the build's first error (twice alike) is the ground truth."""

    commands = build_commands(entry)
    m = syntax_break(root, entry.language, sources)
    if not commands or m is None:
        return None
    clean = await run_commands(sandbox_cfg, str(root), build_env, commands, 600)
    if clean[-1].exit_code != 0 or len(clean) != len(commands):
        return None   # the tools are missing or the release does not build this way: no build task
    tid = task_id(base, "build")
    repo = out / "repos" / tid
    copy_source(root, repo)
    line = apply_mutation(repo, m)
    runs = [await run_commands(sandbox_cfg, str(repo), build_env, commands, 600) for _ in range(2)]
    facts = [build_error_facts(r[-1].output) for r in runs]
    if runs[0][-1].exit_code == 0 or not facts[0] or [f.value for f in facts[0]] != [f.value for f in facts[1]]:
        shutil.rmtree(repo)
        return None
    request = _pick(tid, BUILD_GOALS, BUILD_DIRECT, name=entry.name, cmd=" && ".join(commands))
    mutation = mutation_record(m, line)
    looks = await look_at_failure(sandbox_cfg, str(repo), build_env, runs[0][-1], cap)
    return make_task(entry, tid, "build", request, runs[0], facts[0] + [cause_fact(mutation)], env, f"repos/{tid}",
                     [], cap, dropped, {"mutation": mutation}, looks)


# ---- lint -----------------------------------------------------------------------------------------

_PYFLAKES_LINE = re.compile(r"^\./([\w./-]+\.py):(\d+):(?:\d+:?)? (.+)$", re.MULTILINE)
LINT_GOALS = ("Lint {name} and summarize what the linter finds.",
              "Are there unused imports or undefined names in {name}? Give me the count and the first few.")
LINT_DIRECT = ("Run `{cmd}` and summarize the findings: how many, and the first few with file and line.",)
LINT_COMMAND = "python3 -m pyflakes ."


def lint_facts(output: str) -> list[Fact]:
    """The number of pyflakes findings and the first three (file:line and the name it is about)."""
    findings = _PYFLAKES_LINE.findall(output)
    if not findings:
        return [Fact("outcome", "the linter finds no problem", [r"no (problem|issue|warning|finding)|clean"],
                     ["<exit_code>0</exit_code>"])]
    n = len(findings)
    facts = [Fact("counts", f"{n} findings", [rf"\b{n}\b[^.;\n]{{0,30}}(finding|problem|warning|issue|message)"],
                  [m.group(0) for m in _PYFLAKES_LINE.finditer(output)])]   # countable only when all are shown
    for path, line, msg in findings[:3]:
        name = Path(path).name
        key = re.findall(r"'([\w.]+)'", msg)
        facts.append(Fact("finding", f"{name}:{line}: {msg}", location_fact(path, line).patterns
                          + ([re.escape(key[0])] if key else [])))
    return facts


async def lint_task(entry: Entry, root: Path, out: Path, base: str, env: TaskEnvironment, build_env: TaskEnvironment,
                    sandbox_cfg, cap: int, dropped: dict) -> Task | None:
    """A lint task (Python projects, when the build's venv has pyflakes), run twice alike."""

    if entry.language != "python":   # its venv has pyflakes (tasks.real.VENV_TOOLS)
        return None
    runs = [await run_commands(sandbox_cfg, str(root), build_env, [LINT_COMMAND], 300) for _ in range(2)]
    if runs[0][0].output != runs[1][0].output or runs[0][0].exit_code not in (0, 1):
        return None
    tid = task_id(base, "lint")
    copy_source(root, out / "repos" / tid)
    request = _pick(tid, LINT_GOALS, LINT_DIRECT, name=entry.name, cmd=LINT_COMMAND)
    return make_task(entry, tid, "lint", request, runs[0], lint_facts(runs[0][0].output), env, f"repos/{tid}", [],
                     cap, dropped)
