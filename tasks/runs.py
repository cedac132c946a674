"""Reference runs of a real project's commands, and the tasks made from them: the pieces that
tasks.real (run_tests, discover_tests) and tasks.kinds (run_one_test, build, lint) share.

A fact enters a task only when its evidence is in what the reference commands printed, as an
episode shows it (each output capped at the observation cap, then framed by the protocol).
"""
from __future__ import annotations

import builtins
import keyword
import os
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.protocol import Observation, format_observation
from sandbox import format_output
from tasks.builtin import Mutation, check_reference, reference_report
from tasks.groundtruth import count_fact, location_fact, missing_evidence, name_pattern
from tasks.manifest import Entry, split_of
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task, TaskEnvironment


# Task ids: a project's base name (ecosystem-name), then the kind's parts, joined by ID_SEP. No project
# name holds it (tasks.manifest._NAME), so no id of one project is an id of another: `x~build` is
# project x's build task, whatever other projects are called.
ID_SEP = "~"


def base_name(entry: Entry) -> str:
    """The prefix of a project's task ids and of its files in the corpus (repos/, shared/)."""
    return f"{entry.ecosystem}-{entry.name}".replace("/", "_").replace("@", "")


def task_id(base: str, *parts: str | int) -> str:
    """The id of a project's task: its base name alone (the release as is) or with the kind's parts."""
    return ID_SEP.join([base, *map(str, parts)])


def of_project(tid: str, base: str) -> bool:
    """Whether task id (or file name) `tid` is one of the project with base name `base`."""
    return tid == base or tid.startswith(base + ID_SEP)


def check_distinct(entries: list[Entry]) -> None:
    """Refuse projects whose base names coincide (`@a/b` and `a_b` of one ecosystem): their tasks and
    files would mix."""
    from core.errors import UserError
    seen: dict[str, Entry] = {}
    for e in entries:
        if (other := seen.setdefault(base_name(e), e)) is not e:
            raise UserError(f"manifest projects {other.key} and {e.key} would share task ids and files "
                            f"({base_name(e)!r}: '/' becomes '_', '@' is dropped); list only one of them")


def failed(status: str) -> bool:
    """A per-test status from any runner (pytest, unittest, TAP) that means the test did not pass."""
    return status in ("FAILED", "ERROR", "FAIL", "not ok")


def short_name(test_id: str, runner: str) -> str:
    """A test's name as its runner prints it on its own: pytest's `file.py::Class::test[param]` ->
    `test[param]` (a `::` inside the brackets, e.g. an IPv6 parameter, is not a separator); TAP's
    numbered `3 description` -> `description`; JUnit's `Class::method` -> `method`."""
    if runner == "tap":
        return test_id.split(" ", 1)[-1]
    base, bracket, param = test_id.partition("[")
    return base.rsplit("::", 1)[-1] + bracket + param


# what a runner prints its totals in, without timings (evidence must read the same in every run): each
# line's numbers by name (a runner's words for the count of failed tests and for all tests)
_SUMMARY_LINES = {
    "pytest": re.compile(r"^[= ]*\d+ \w+(?: \w+)?(?:, \d+ \w+(?: \w+)?)* in [\d.]+s", re.MULTILINE),
    "unittest": re.compile(r"^(?:Ran (?P<total>\d+) tests?(?= in )|OK\b.*$|FAILED \(.*\)$)", re.MULTILINE),
    # tape pads its counts ("# pass  2") and prints no fail line when none failed
    "tap": re.compile(r"^# (?:tests +(?P<total>\d+)|fail +(?P<failed>\d+)|pass +(?P<passed>\d+))$", re.MULTILINE),
    "automake": re.compile(r"^# (?:TOTAL: +(?P<total>\d+)|(?:FAIL|ERROR): +(?P<failed>\d+))$", re.MULTILINE),
    "ctest": re.compile(r"^\d+% tests passed, (?P<failed>\d+) tests? failed out of (?P<total>\d+)$", re.MULTILINE),
    "junit": re.compile(r"^\[ +(?:(?P<total>\d+) tests found|(?P<failed>\d+) tests failed) +\]$", re.MULTILINE),
    # a module's totals after "Results:" (a class's line goes on: ", Time elapsed: ... - in Class")
    "surefire": re.compile(r"(?:(?<=^\[INFO\] )|(?<=^\[ERROR\] )|(?<=^\[WARNING\] ))Tests run: (?P<total>\d+), "
                           r"Failures: (?P<failures>\d+), Errors: (?P<errors>\d+), Skipped: \d+$", re.MULTILINE),
}
# pytest's totals: every outcome of a test (not warnings, nor deselected tests, which did not run)
_PYTEST_COUNT = re.compile(r"\b(\d+) (passed|failed|errors?|skipped|xfailed|xpassed)\b")
_UNITTEST_FAILED = re.compile(r"\b(?:failures|errors)=(\d+)")


@dataclass(frozen=True)
class Totals:
    """A run's counts as its runner printed them, and the strings they were read from."""
    failed: int
    total: int
    evidence: list[str]


def summary_totals(runner: str, output: str) -> Totals | None:
    """The failed and total counts of a run as its runner's summary prints them (None when it prints
    none, or not both). They, not the count of parsed per-test lines, are what an agent reads and
    reports: a parser may miss tests (pytest ids with spaces) that the summary counts. pytest's and
    unittest's last summary (a test may print a nested run's first); the other runners' summaries
    summed (a command may run several suites, each with its totals)."""
    lines = list(_SUMMARY_LINES[runner].finditer(output)) if runner in _SUMMARY_LINES else []
    if runner == "pytest":
        counts = _PYTEST_COUNT.findall(lines[-1].group(0)) if lines else []
        if not counts:
            return None
        failed = sum(int(n) for n, what in counts if what in ("failed", "error", "errors"))
        return Totals(failed, sum(int(n) for n, _ in counts), [f"{n} {what}" for n, what in counts])
    if runner == "unittest":
        ran = [m for m in lines if m.group("total")]
        verdict = [m for m in lines if not m.group("total")]
        if not ran or not verdict:
            return None
        failed = sum(map(int, _UNITTEST_FAILED.findall(verdict[-1].group(0))))
        return Totals(failed, int(ran[-1].group("total")), [ran[-1].group(0), verdict[-1].group(0)])
    if runner == "surefire":   # failures (assertions) and errors (exceptions) both fail; modules summed
        if not lines:
            return None
        return Totals(sum(int(m.group("failures")) + int(m.group("errors")) for m in lines),
                      sum(int(m.group("total")) for m in lines), list(dict.fromkeys(m.group(0) for m in lines)))
    def total(group: str) -> int | None:
        found = [int(m.group(group)) for m in lines if group in m.re.groupindex and m.group(group)]
        return sum(found) if found else None
    all_, failed, passed = total("total"), total("failed"), total("passed")
    if failed is None and None not in (all_, passed):   # tape, when none failed
        failed = all_ - passed
    if all_ is None or failed is None or failed > all_:   # node's "# tests 0", "# fail 1": a file failed to load
        return None
    return Totals(failed, all_, list(dict.fromkeys(m.group(0) for m in lines)))


def failing_names(results: dict[str, str], runner: str) -> list[str]:
    """The names of the failing tests as the runner prints them (short_name), sorted, each once."""
    return list(dict.fromkeys(short_name(t, runner) for t in sorted(results) if failed(results[t])))


def shows_name(name: str, text: str) -> bool:
    """Whether `text` shows a test's name whole (name_pattern, as the judge matches a report)."""
    return re.search(name_pattern(name), text, re.IGNORECASE | re.MULTILINE) is not None


def shown_text(runs: list["Run"], cap: int) -> str:
    """What an episode shows of the runs' outputs, each capped at `cap` bytes (head and tail)."""
    return "\n".join(format_output(r.output.encode(), limit=cap)[0] for r in runs)


def result_facts(results: dict[str, str], runner: str = "unittest", output: str = "", cap: int = 0,
                 looks: list["Run"] = ()) -> list[Fact]:
    """Failing tests (up to 5) and the counts. A test's evidence is its name; the counts are the
    runner's totals as its summary prints them in `output`, their evidence the summary (no summary:
    no counts fact; a count of the parsed per-test results could disagree with what the output
    says). TAP counts its test points, which for tape are assertions, so its
    counts say so. With `cap` (the bytes of output an episode shows), the failing tests that the
    capped output (or that of `looks`, the reference's later commands) names come first: of a long
    run the cut may hide the first five by name while its tail still prints later failures."""
    names = failing_names(results, runner)
    if cap:
        shown = shown_text([Run("", output, 0), *looks], cap)
        names.sort(key=lambda n: not shows_name(n, shown))   # stable: by name within the shown and the hidden
    # no evidence recorded: make_task finds the name where its pattern matches, a whole name
    facts = [Fact("failing_test", f"{short} fails", [name_pattern(short)]) for short in names[:5]]
    totals = summary_totals(runner, output)
    if totals is None:   # the runner printed no totals: an agent cannot report counts (the caller counts the drop)
        return facts
    counts = count_fact(totals.failed, totals.total, "TAP assertions" if runner == "tap" else "tests")
    counts.evidence = totals.evidence
    return facts + [counts]


def observable(facts: list[Fact], seen: str) -> tuple[list[Fact], list[Fact]]:
    """(kept, dropped): a fact is kept when all its evidence is in `seen`, what the agent saw; a fact
    recorded without evidence gets what its patterns match there (evidence_by_patterns)."""
    for f in facts:
        f.evidence = f.evidence or evidence_by_patterns(f, seen)
    kept = [f for f in facts if not missing_evidence(f, seen)]
    return kept, [f for f in facts if f not in kept]


@dataclass
class Run:
    """One reference command as the build ran it: the whole output and the exit code."""
    command: str
    output: str
    exit_code: int


async def run_commands(sandbox_cfg, repo: str, env: TaskEnvironment, commands: list[str], timeout_s: float) -> list[Run]:
    """Run commands in one fresh sandbox until one fails; returns a Run for each run."""
    runs = []
    async with await env.open_sandbox(sandbox_cfg, repo) as sb:
        for c in commands:
            r = await sb.run(c, timeout_s=timeout_s)
            runs.append(Run(c, r.output, r.exit_code))
            if r.exit_code != 0 or r.timed_out:
                break
    return runs


def evidence_by_patterns(fact: Fact, seen: str) -> list[str]:
    """Evidence for a fact recorded without any: what each of its report patterns matches in what the
    agent saw ([] when one matches nothing: the fact is not observable)."""
    found = [re.search(p, seen, re.IGNORECASE | re.MULTILINE) for p in fact.patterns]
    return [m.group(0) for m in found] if found and all(found) else []


def make_task(entry: Entry, tid: str, category: str, request: str, runs: list[Run], facts: list[Fact],
              env: TaskEnvironment, repo: str, setup: list[str], cap: int, dropped: dict[str, int],
              observed: dict | None = None, followups: list["Look"] = ()) -> Task:
    """A task whose reference solution is `runs`' commands, then `followups` (looks at the source a
    failure points to: a SourceView adds the line it showed as a fact), and whose ground truth is `facts`,
    kept only where what the agent sees of the runs (each output capped at `cap`) shows them; the
    last of `runs` is the one the report is about."""
    about = runs[-1]
    facts = [*facts, *(f for v in followups if (f := v.fact()))]
    runs = [*runs, *followups]
    capped = [format_output(r.output.encode(), limit=cap) for r in runs]   # (text, truncated): what an episode shows
    seen = "\n".join(format_observation(Observation(r.exit_code, text, truncated=cut), turns_left=1)
                     for r, (text, cut) in zip(runs, capped))
    facts, lost = observable(facts, seen)
    for f in lost:
        dropped[f.kind] = dropped.get(f.kind, 0) + 1
    code = about.exit_code
    facts.append(Fact("exit_status", f"exit status {code}", [rf"\bexit\b\D{{0,20}}\b{code}\b"],
                      [f"<exit_code>{code}</exit_code>"]))
    status = "success" if code == 0 else "failure" if any(f.kind in ("failing_test", "finding") for f in facts) else "error"
    observed = {**(observed or {}), "outputs": [text for text, _ in capped],   # what the scripted teacher compares
                "exit_codes": [r.exit_code for r in runs]}
    commands = [r.command for r in runs]
    t = Task(id=tid, language=entry.language, category=category, project=entry.name, repo_dir=repo,
             request=request, setup=list(setup),
             ground_truth=GroundTruth(exit_status=code, facts=facts, observed=observed),
             reference=ReferenceSolution(commands, reference_report(   # it states the exit status itself
                 about.command, code, status, [f for f in facts if f.kind != "exit_status"])),
             split=split_of(entry.name), environment=env)
    check_reference(t)
    return t


def mutation_record(m: Mutation, line: int) -> dict:
    """Where a fault was injected, as a task records it (`observed["mutation"]`, for analysis)."""
    return {"operator": m.name, "file": m.file, "line": line, "cause": m.cause}


def cause_fact(mutation: dict) -> Fact:
    """The injected fault as a fact: a report names its file and line. make_task keeps it only where
    the reference's outputs show that file:line (a traceback through it, or a look at the source)."""
    where = location_fact(mutation["file"], mutation["line"])
    return Fact("cause", f"cause: {mutation['cause']} in {where.value}", where.patterns)


# ---- looking at the source a failure points to --------------------------------------------------------

# where an output names a place in a file: Python tracebacks, tsc's file(line,col), and file:line as
# pytest, gcc, javac, node's and the JVM's stack frames print it
_PLACE = re.compile(r'File "([^"]+)", line (\d+)|([\w./-]*\w\.tsx?)\((\d+),\d+\)'
                    r'|([\w./-]*\w\.(?:py|[cm]?js|tsx?|java|c|cc|cpp|cxx|h|hh|hpp)):(\d+)')
CONTEXT_LINES = 3   # lines shown before and after the failing one


def is_test_file(path: str) -> bool:
    """Whether a repository path is a test's (the builder's rule: 'test' in its path)."""
    return "test" in path.lower()


def _in_repo(path: str, repo: Path, workdir: str, names: list[str]) -> str:
    """`path` as printed in a sandbox, relative to the repository ('' when it is not one of its
    files: the interpreter's, a dependency's). A bare or partial path (javac's, the JVM's, make's in
    a subdirectory) is the repository file it ends with, when exactly one does."""
    if path.startswith("/"):
        path = "/" + path.lstrip("/")   # file:///work/repo/x.js
        if not path.startswith(workdir.rstrip("/") + "/"):
            return ""
        path = path[len(workdir.rstrip("/")) + 1:]
    rel = os.path.normpath(path)
    if rel.startswith("..") or rel == ".":
        return ""
    if (repo / rel).is_file():
        return rel
    ends = [n for n in names if n == rel or n.endswith("/" + rel)]
    return ends[0] if len(ends) == 1 else ""


def failing_place(shown: str, repo: Path, workdir: str) -> tuple[str, int] | None:
    """Where a failure's output (as the agent sees it) points in the project's own files: the first
    place in a source file that is not a test (the frame the project raised from, a compiler error),
    else the first in a test file (the failing assertion); None when it names none."""
    names: list[str] = []
    places = []
    for m in list(_PLACE.finditer(shown))[:200]:
        path, line = next((m.group(i), int(m.group(i + 1))) for i in (1, 3, 5) if m.group(i))
        if not names:   # the repository's files, listed once, for bare names
            names = [str(p.relative_to(repo)) for p in repo.rglob("*") if "node_modules" not in p.parts
                     and ".git" not in p.parts and p.is_file()] or ["."]
        rel = _in_repo(path, repo, workdir, names)
        if rel and 0 < line <= len((repo / rel).read_text(errors="replace").splitlines()):
            places.append((rel, line))
    source = [p for p in places if not is_test_file(p[0])]
    return (source or places or [None])[0]


@dataclass
class Look(Run):
    """A reference command run after the one the report is about, to look further (the failure lines a
    cut hid, the source); what it shows may make facts observable (failing tests' names, the injected
    cause), and may itself be a fact of the report."""

    def fact(self) -> Fact | None:
        return None


def window_command(path: str, first: int, last: int) -> str:
    """`grep -Hn` prints each line as path:number:text, so the report can cite it by file and line."""
    return f"grep -Hn '' {shlex.quote(path)} | sed -n '{first},{last}p'"


@dataclass
class SourceView(Look):
    """A look at the lines around `path`:`line` (where a failure's output points), run after the
    command the report is about; the line there is a fact of the report."""
    path: str = ""
    line: int = 0

    @staticmethod
    def command_for(path: str, line: int) -> str:
        return window_command(path, max(1, line - CONTEXT_LINES), line + CONTEXT_LINES)

    def shown(self, line: int) -> str:
        """The text of `line` of the file as this look printed it ('' when it printed none)."""
        prefix = f"{self.path}:{line}:"
        return next((ln[len(prefix):] for ln in self.output.splitlines() if ln.startswith(prefix)), "")

    def fact(self) -> Fact | None:
        """The failing line as it reads, backed by the line this look printed (None: it printed none)."""
        shown = self.shown(self.line)
        if not shown:
            return None
        code = shown.strip() if len(shown.strip()) <= 80 else shown.strip()[:77] + "..."
        where = location_fact(self.path, self.line)
        return Fact("failing_line", f"the failing line {self.path}:{self.line} reads `{code}`", where.patterns,
                    [f"{self.path}:{self.line}:{shown}"])


async def look_at_failure(sandbox_cfg, repo: str, env: TaskEnvironment, run: Run, cap: int) -> list[Look]:
    """What an expert runs after a failure whose output (as the agent sees it, capped at `cap`) points
    into the project's files: the lines around that place, in the task's repository, and, when that
    place is a test's line that calls a function of the project, that function's definition
    (follow_call) ([] when the output points nowhere, or the look fails)."""
    place = failing_place(format_output(run.output.encode(), limit=cap)[0], Path(repo), sandbox_cfg.workdir)
    if run.exit_code == 0 or place is None:
        return []
    [r] = await run_commands(sandbox_cfg, repo, env, [SourceView.command_for(*place)], 60)
    if r.exit_code != 0 or not r.output.strip():
        return []
    view = SourceView(r.command, r.output, r.exit_code, *place)
    return [view, *await follow_call(sandbox_cfg, repo, env, view)]


# ---- showing the failing tests a long run's capped output hides -----------------------------------

# the lines a runner prints where a test fails, with its name, for `grep -E`: pytest's `-v` lines and
# short summary, unittest's `-v` lines and headers, TAP's points, the JUnit tree's leaves, ctest's and
# automake's result lines
FAILURE_LINES = {
    "pytest": r" (FAILED|ERROR)( |$)|^(FAILED|ERROR) ",
    "unittest": r"^(FAIL|ERROR): |\.\.\. (FAIL|ERROR)$",
    "tap": r"^\s*not ok ",
    "junit": "✘",
    "surefire": r"<<< (FAILURE|ERROR)!",
    "ctest": r"\*\*\*(Failed|Exception|Timeout)|Not Run",
    "automake": r"^(FAIL|ERROR): ",
}


def failures_command(test_command: str, runner: str) -> str:
    """The test command again, its output (stderr too: unittest prints there) filtered to the
    runner's failure lines."""
    return f"({test_command}) 2>&1 | grep -E {shlex.quote(FAILURE_LINES[runner])}"


def hides_failures(run: Run, results: dict[str, str], runner: str, cap: int) -> bool:
    """Whether what an agent sees of a failing run (capped at `cap`, head and tail) may hide failing
    tests by name, judged from that alone, as an expert would: the output was cut, it names fewer
    failing tests than a task names (5), and no printed total says those are all."""
    text, cut = format_output(run.output.encode(), limit=cap)
    shown = sum(shows_name(n, text) for n in failing_names(results, runner))
    totals = summary_totals(runner, text)
    return run.exit_code != 0 and cut and shown < 5 and not (totals and totals.failed <= shown)


async def show_failures(sandbox_cfg, repo: str, env: TaskEnvironment, entry: Entry, run: Run,
                        results: dict[str, str], cap: int, timeout_s: float) -> list[Look]:
    """What an expert runs after a failing run whose output may hide failing tests by name
    (hides_failures): the same tests again, filtered to their failure lines (failures_command),
    after the setup that an episode runs first, in a fresh sandbox of `repo`. Kept whatever it
    shows (grep's status 1: no failure lines), as an agent would run it on what it saw: two tasks
    whose runs read the same then go on alike. [] when nothing may be hidden, the runner has no
    failure lines here, or the setup fails."""
    if entry.runner not in FAILURE_LINES or not hides_failures(run, results, entry.runner, cap):
        return []
    command = failures_command(entry.test_command, entry.runner)
    runs = await run_commands(sandbox_cfg, repo, env, [*entry.setup, command], timeout_s)
    return [Look(command, runs[-1].output, runs[-1].exit_code)] if runs[-1].command == command else []


# ---- following the call of a failing test line (Python, JavaScript) -----------------------------------

DEF_LINES = 40   # the most lines of a function's definition shown
# a name called (a JavaScript name may hold `$`), after a dot when it is an attribute
_CALL = re.compile(r"(\.\s*)?(?<![\w$])([A-Za-z_$][\w$]*)\s*\(")


def python_end(lines: list[str], at: int) -> int:
    """The last line (1-based) of the Python function defined at line `at`: the last non-blank line
    indented deeper than its `def` before one that is not (a closing `)` of its signature aside),
    at most DEF_LINES - 1 lines after it."""
    indent = len(lines[at - 1]) - len(lines[at - 1].lstrip())
    end = at
    for n in range(at + 1, min(len(lines), at + DEF_LINES - 1) + 1):
        text = lines[n - 1]
        if not text.strip():
            continue
        if len(text) - len(text.lstrip()) <= indent and not text.lstrip().startswith(")"):
            break
        end = n
    return end


def braces_end(lines: list[str], at: int) -> int:
    """The last line (1-based) of the JavaScript function defined at line `at`: where its braces
    close, or, for an arrow function's expression (no brace), where its statement ends; at most
    DEF_LINES - 1 lines after it. Braces in strings are counted too: the window may be long or
    short by a few lines, and what it shows is all that counts (make_task's check)."""
    braces = parens = 0
    opened = False
    last = min(len(lines), at + DEF_LINES - 1)
    for n in range(at, last + 1):
        text = lines[n - 1]
        braces += text.count("{") - text.count("}")
        parens += text.count("(") - text.count(")")
        opened = opened or "{" in text
        if braces <= 0 and parens <= 0 and (opened or not text.rstrip().endswith(("=>", "="))):
            return n
    return last


@dataclass(frozen=True)
class Definitions:
    """How a language's function definitions are found (`grep -rnE`) and how far one reaches."""
    suffixes: tuple[str, ...]   # its source files
    pattern: str                # a definition of NAME, as a POSIX extended regex
    not_called: frozenset[str]  # names that, called bare, are not the project's functions
    end: Callable[[list[str], int], int]   # (lines, line of the definition) -> its last line
    grep_options: str = ""

    def regex(self, name: str) -> re.Pattern:
        """The same pattern for Python's re."""
        return re.compile(self.pattern.replace("NAME", re.escape(name)).replace("[[:space:]]", r"\s"))

    def command(self, name: str) -> str:
        """`grep -rnE` prints each definition as ./path:line:text."""
        includes = " ".join(f"--include='*{s}'" for s in self.suffixes)
        pattern = self.pattern.replace("NAME", re.escape(name))   # a JavaScript name's `$` is an anchor unescaped
        return f"grep -rnE {includes}{self.grep_options} {shlex.quote(pattern)} ."

    def found(self, grep_output: str) -> list[tuple[str, int]]:
        """(path, line) of each definition `command` printed in a file that is not a test's."""
        line = re.compile(rf"^\./(.+?(?:{'|'.join(map(re.escape, self.suffixes))})):(\d+):")
        return [(m.group(1), int(m.group(2))) for ln in grep_output.splitlines()
                if (m := line.match(ln)) and not is_test_file(m.group(1))]


_S = "[[:space:]]"
_JS_NAME = "[A-Za-z_$][A-Za-z0-9_$]*"
DEFINITIONS = {
    ".py": Definitions((".py",), rf"^{_S}*(async{_S}+)?def NAME{_S}*\(", frozenset({*dir(builtins), *keyword.kwlist}),
                       python_end),
    # function NAME(, NAME = function / (...) => / x => (also as const/let/var, exports.NAME,
    # Foo.prototype.NAME, NAME: in an object), a method NAME(...) {
    ".js": Definitions(
        (".js", ".mjs", ".cjs"),
        rf"^{_S}*((export{_S}+(default{_S}+)?)?(async{_S}+)?function{_S}*\*?{_S}*NAME{_S}*\("
        rf"|(export{_S}+)?((const|let|var){_S}+|({_JS_NAME}\.)+)?NAME{_S}*[=:]{_S}*(async{_S}+)?"
        rf"(function|\(|{_JS_NAME}{_S}*=>)"
        rf"|(static{_S}+)?(async{_S}+)?NAME{_S}*\([^)]*\){_S}*\{{)",
        frozenset({"if", "for", "while", "switch", "catch", "function", "return", "typeof", "await", "new",
                   "super", "require", "import", "describe", "it", "test"}),
        braces_end, " --exclude-dir=node_modules"),
}
DEFINITIONS[".mjs"] = DEFINITIONS[".cjs"] = DEFINITIONS[".js"]


def statement_at(view: SourceView) -> str:
    """The statement starting at the failing line as `view` printed it: that line, and the next ones
    it printed while parentheses stay open (a call spread over lines), at most 5."""
    lines: list[str] = []
    depth = 0
    for n in range(view.line, view.line + 5):
        text = view.shown(n)
        if not text or (lines and depth <= 0):
            break
        lines.append(text)
        depth += text.count("(") - text.count(")")
    return " ".join(lines)


def called_names(statement: str, not_called: frozenset[str] = DEFINITIONS[".py"].not_called) -> list[str]:
    """The names a statement calls, in order, without assert helpers and names in `not_called`
    called bare (a method may share a builtin's name): `self.assertEqual(smaller(2, 3), 2)` -> ['smaller']."""
    names = [n for dot, n in _CALL.findall(statement) if (dot or n not in not_called) and not n.startswith("assert")]
    return list(dict.fromkeys(names))


async def follow_call(sandbox_cfg, repo: str, env: TaskEnvironment, view: SourceView) -> list[Look]:
    """When the failing line `view` shows is a test's (Python, JavaScript) and calls a function the
    project defines once outside its tests, what an expert runs next: `grep -rnE` for its
    definition, then the lines of that definition. The name is read from what `view` printed; the
    first name called that has one such definition is followed ([] when none has)."""
    lang = DEFINITIONS.get(Path(view.path).suffix)
    if lang is None or not is_test_file(view.path):
        return []
    root = Path(repo)
    # the files grep reads, as the builder sees them (grep -r skips links; node_modules is not the project)
    sources = [p for p in root.rglob("*") if p.suffix in lang.suffixes and p.is_file() and not p.is_symlink()
               and not is_test_file(str(p.relative_to(root)))
               and not {"node_modules", ".git"} & set(p.relative_to(root).parts)]
    for name in called_names(statement_at(view), lang.not_called):
        define = lang.regex(name)
        found = [(str(p.relative_to(root)), n) for p in sources
                 for n, text in enumerate(p.read_text(errors="replace").splitlines(), 1) if define.match(text)]
        if len(found) != 1:
            continue   # not the project's, or defined in several places: which one runs is unclear
        [(path, line)] = found
        grep = lang.command(name)
        window = window_command(path, line, lang.end((root / path).read_text(errors="replace").splitlines(), line))
        runs = await run_commands(sandbox_cfg, repo, env, [grep, window], 60)
        # the look stands on what grep printed: that one definition outside the tests
        if [r.exit_code for r in runs] != [0, 0] or lang.found(runs[0].output) != found:
            return []
        return [Look(r.command, r.output, r.exit_code) for r in runs]
    return []


def copy_source(root: Path, dest: Path) -> None:
    """A task's repository snapshot: the project without its node_modules (shared, bound read-only)."""
    shutil.copytree(root, dest, symlinks=True, ignore=lambda d, names: ["node_modules"] if Path(d) == root else [])

