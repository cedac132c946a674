"""Task kinds of a real project beyond its test suite (tasks/real.py makes run_tests and
discover_tests): each with ground truth by execution in the project's sandbox, a reference solution,
request phrasings (half of them goals that name no command), and only facts the output shows.

    run_one_test  one failing test of a fault task, run by name (pytest node id, unittest's dotted
                  name, ctest -R, automake TESTS=)
    build         the project's build (its setup; Python: compileall; TypeScript: tsc) after a
                  syntax-breaking edit; the report names the compiler's first error and file:line
    lint          pyflakes on a Python project as released; the report gives the count and the first
                  findings with file:line
    install       a Python project installed offline (pip --no-index) from the wheelhouse the build made
                  (tasks.real.project_wheels), as released (what got installed) and with a runtime
                  requirement pinned to a version no wheel has (pip names it; grep finds the pin)
    run_script    a Python project's console script or `__main__` module, run from the source with
                  --version (else --help); the report gives the version (else the usage line's program)
Each kind's task is made once per project, when the project's tools allow it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
import shlex
import shutil
from pathlib import Path

from sandbox.config import SandboxConfig
from tasks.builtin import Mutation, apply_mutation
from tasks.groundtruth import build_facts, location_fact, python_traceback_facts
from tasks.manifest import Entry, check_project
from tasks.runs import (Look, Run, cause_fact, copy_source, failed, look_at_failure, make_task, mutation_record,
                        result_facts, run_commands, short_name, task_id)
from tasks.types import Fact, Task, TaskEnvironment

KINDS = ("run_tests", "discover_tests", "run_one_test", "build", "lint", "install", "run_script")


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
    if entry.runner == "surefire" and re.fullmatch(r"[\w$]+::\w+", test_id):   # Class::method, its -Dtest=Class#method
        return f"{cmd} -Dtest={test_id.replace('::', '#')}"
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


# ---- install (Python) -----------------------------------------------------------------------------

WHEELS_MOUNT = "/opt/wheels"   # where a Python project's wheelhouse appears in its install tasks' sandboxes
# into a throwaway target inside the sandbox (the venv stays read-only): pip builds the project from its
# source in an isolated environment, filled from the wheelhouse too
INSTALL_COMMAND = f"python3 -m pip install --no-index --find-links {WHEELS_MOUNT} --target /tmp/site ."
INSTALL_GOALS = ("Install {name} with its dependencies from the wheels in {wheels} (there is no network) and tell "
                 "me whether it works; if not, which requirement fails?",
                 "Can {name} be installed offline from the wheelhouse {wheels}? Tell me what gets installed, or what "
                 "fails.")
INSTALL_DIRECT = ("Run `{cmd}` and tell me whether the install succeeds; if not, which requirement fails.",
                  "Please install the project with `{cmd}` and report what was installed or what failed.")
_NO_MATCH = re.compile(r"^ERROR: No matching distribution found for (\S+)$", re.MULTILINE)
_INSTALLED = re.compile(r"^Successfully installed (.+)$", re.MULTILINE)
UNSATISFIABLE = "999.0"   # the version a fault pins a requirement to: no package has it
EPISODE_COMMAND_S = SandboxConfig.command_timeout_s   # an episode's command limit, by default


def _name_pattern(name: str) -> str:
    """A requirement's name as a regex: case aside, `-`, `_` and `.` are one (PEP 503)."""
    return "[-_.]".join(map(re.escape, re.split(r"[-_.]+", name)))


def _bare_name(req: str) -> str:
    """A requirement's name as written: `Tomli_W[x]>=1 ; marker` -> `Tomli_W`."""
    return re.split(r"[\s\[<>=!~;@(]", req.strip(), maxsplit=1)[0]


def unsatisfiable(root: Path, requires: tuple[str, ...]) -> Mutation | None:
    """A fault for an install task: the first runtime requirement written as a string literal
    (pyproject.toml, setup.py) or a line (setup.cfg) in the project's metadata, pinned to a version
    that does not exist."""
    for req in requires:
        name = _name_pattern(_bare_name(req))
        written = {"setup.cfg": rf"^[ \t]+((?i:{name})(?![\w.-])[^\n#]*?)[ \t]*$",
                   "quoted": rf"\"((?i:{name})(?![\w.-])[^\"\n]*)\"|'((?i:{name})(?![\w.-])[^'\n]*)'"}
        for file in ("pyproject.toml", "setup.cfg", "setup.py"):
            text = (root / file).read_text(errors="replace") if (root / file).is_file() else ""
            for m in re.finditer(written.get(file, written["quoted"]), text, re.MULTILINE):
                old, spec = m.group(0), next(g for g in m.groups() if g)
                if text.count(old) == 1:
                    return Mutation("unsatisfiable", file, old, old.replace(spec, f"{_bare_name(spec)}=={UNSATISFIABLE}"),
                                    f"the requirement {_bare_name(req)} is pinned to a version that does not exist "
                                    f"({UNSATISFIABLE})")
    return None


def install_facts(output: str) -> list[Fact]:
    """What pip says: the requirement no wheel satisfies, or the packages it installed (how many, and
    which)."""
    if m := _NO_MATCH.search(output):
        req = m.group(1)
        name, _, version = req.partition("==")
        return [Fact("failing_requirement", f"no distribution satisfies the requirement {req}",
                     [_name_pattern(name), re.escape(version or req)], [m.group(0)])]
    if m := _INSTALLED.search(output):
        packages = m.group(1).split()
        n = len(packages)
        return [Fact("outcome", "the install succeeds", [r"succe|\binstalled\b"], ["Successfully installed"]),
                Fact("counts", f"{n} package{'s' * (n != 1)} installed: {', '.join(packages)}",
                     [rf"\b{n}\b[^.;\n]{{0,30}}packages?"] + [re.escape(p) for p in packages[:5]], [m.group(0)])]
    return []


async def install_tasks(entry: Entry, root: Path, out: Path, base: str, wheels, env: TaskEnvironment,
                        build_env: TaskEnvironment, sandbox_cfg, cap: int, dropped: dict) -> list[Task]:
    """Install tasks of a Python project (its wheelhouse `wheels`, tasks.real.Wheelhouse, bound in
    `env`): the release installs offline (clean), and a copy whose metadata pins a runtime requirement
    to a version no wheel has fails, naming it; the reference then finds that pin in the metadata
    (grep). Each run twice alike; none when the release does not install."""
    cmd = INSTALL_COMMAND
    tasks = []
    variants = [None, unsatisfiable(root, wheels.requires)]
    for m in variants if variants[1] else variants[:1]:
        tid = task_id(base, "install", *([m.name] if m else []))
        repo = out / "repos" / tid
        copy_source(root, repo)
        line = apply_mutation(repo, m) if m else 0
        # an episode's command limit: an install that takes longer (a C extension's build) gives no task
        runs = [await run_commands(sandbox_cfg, str(repo), build_env, [cmd], EPISODE_COMMAND_S) for _ in range(2)]
        facts = [install_facts(r[0].output) for r in runs]
        if (not facts[0] or [f.value for f in facts[0]] != [f.value for f in facts[1]]
                or runs[0][0].exit_code != runs[1][0].exit_code or (runs[0][0].exit_code == 0) != (m is None)):
            shutil.rmtree(repo)
            if m is None:
                return []   # the release does not install offline: no fault of it either
            continue
        looks, extra, observed = [], [], {}
        if m:
            pin = m.new.strip("\"' \t")
            grep = f"grep -rnF {shlex.quote(pin)} --include=pyproject.toml --include=setup.cfg --include=setup.py ."
            [r] = await run_commands(sandbox_cfg, str(repo), build_env, [grep], 60)
            looks = [Look(r.command, r.output, r.exit_code)] if r.exit_code == 0 else []
            observed = {"mutation": mutation_record(m, line)}
            extra = [cause_fact(observed["mutation"])]
        request = _pick(tid, INSTALL_GOALS, INSTALL_DIRECT, name=entry.name, wheels=WHEELS_MOUNT, cmd=cmd)
        tasks.append(make_task(entry, tid, "install", request, runs[0], facts[0] + extra, env, f"repos/{tid}", [], cap,
                               dropped, observed, looks))
    return tasks


# ---- run_script (Python) --------------------------------------------------------------------------

_VERSION = re.compile(r"(?<![\w.])v?(\d+(?:\.\d+)+(?:[-+.]?(?:a|b|rc|dev|post)\d*)?)(?![\w.])")
_USAGE = re.compile(r"^\s*usage:\s*(\S+)", re.IGNORECASE | re.MULTILINE)
SCRIPT_GOALS = {"--version": ("Which version of {name} is this? Its command-line program {program} can tell; it is "
                              "not installed, so run it from the source and tell me what it reports.",),
                "--help": ("How is {name}'s command-line program {program} used? It is not installed: run it from "
                           "the source, ask for its help, and tell me its usage line.",)}
SCRIPT_DIRECT = ("Run `{cmd}` and tell me what it prints (the key values) and whether it exits cleanly.",
                 "Please run `{cmd}` and report the result.")


def script_commands(root: Path, scripts: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """(program, the command that runs it from the source) for each console script (`module:function`:
    as the script pip would write does it, with the script's name as argv[0]) and each top-level
    package with a `__main__` module (`python3 -m`); `PYTHONPATH=src` for a src layout."""
    def prefix(module: str) -> str | None:
        top = module.split(".")[0]
        for where, pre in ((root, ""), (root / "src", "PYTHONPATH=src ")):
            if (where / top).is_dir() or (where / f"{top}.py").is_file():
                return pre
        return None
    found = []
    for name, target in scripts:
        module, _, attr = target.split("[")[0].strip().partition(":")
        if not attr or not re.fullmatch(r"[\w.-]+", name) or (pre := prefix(module)) is None:
            continue
        code = f'import sys; sys.argv[0] = "{name}"; from {module} import {attr.split(".")[0]}; sys.exit({attr}())'
        found.append((name, f"{pre}python3 -c {shlex.quote(code)}"))
    for main in sorted([*root.glob("*/__main__.py"), *root.glob("src/*/__main__.py")]):
        pkg = main.parent.name
        if pkg.isidentifier() and "test" not in pkg.lower() and (pre := prefix(pkg)) is not None:
            found.append((pkg, f"{pre}python3 -m {pkg}"))
    return found


def script_facts(flag: str, output: str) -> list[Fact]:
    """The key value a program prints: with --version the version (on its first line), with --help
    the program its usage line names."""
    lines = [ln for ln in output.splitlines() if ln.strip()]
    if flag == "--version" and lines and (m := _VERSION.search(lines[0])):
        return [Fact("version", f"it reports version {m.group(1)}", [rf"(?<![\w.]){re.escape(m.group(1))}(?!\.?\w)"],
                     [lines[0].strip()])]
    if flag == "--help" and (m := _USAGE.search(output)):
        return [Fact("usage", f"its usage line names the program {m.group(1)}", [re.escape(m.group(1))],
                     [m.group(0).strip()])]
    return []


async def script_task(entry: Entry, root: Path, out: Path, base: str, scripts, env: TaskEnvironment,
                      build_env: TaskEnvironment, sandbox_cfg, cap: int, dropped: dict) -> Task | None:
    """A run_script task of a Python project: the first of its programs (script_commands, at most 3
    tried) that, run with --version (else --help), exits 0 within an episode's command limit twice
    alike and prints its key value."""
    for program, command in script_commands(root, scripts)[:3]:
        for flag in ("--version", "--help"):
            cmd = f"{command} {flag}"
            runs = [await run_commands(sandbox_cfg, str(root), build_env, [cmd], EPISODE_COMMAND_S) for _ in range(2)]
            facts = script_facts(flag, runs[0][0].output)
            if runs[0][0].exit_code != 0 or runs[0][0].output != runs[1][0].output or not facts:
                continue
            tid = task_id(base, "script")
            copy_source(root, out / "repos" / tid)
            request = _pick(tid, SCRIPT_GOALS[flag], SCRIPT_DIRECT, name=entry.name, program=program, cmd=cmd)
            return make_task(entry, tid, "run_script", request, runs[0], facts, env, f"repos/{tid}", [], cap, dropped)
    return None
