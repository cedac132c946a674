"""The built-in corpus: small repositories from committed templates (tasks/templates/), with injected
faults, whose ground truth comes from running the reference commands in a real sandbox.

It builds offline in seconds, so tests and the embedded default training run have real tasks on any
machine. Tasks are short on purpose (one or two commands, a short report): the embedded tiny model
has a few million parameters and a handful of turns. Splits are by project, so no held-out task
shares a repository with a training task.

A project = a template directory + how it is run + its fault variants. A variant is a Mutation: one
exact text replacement (or a deleted file) whose location is recorded, so the ground truth can name
the cause by file and line.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tasks.groundtruth import (build_facts, location_fact, output_facts, python_traceback_facts, tap_facts,
                               unittest_facts)
from tasks.store import write_corpus
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task

TEMPLATES = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class Mutation:
    """One injected fault: replace `old` (which must occur exactly once) by `new` in `file`, or
    delete `file` when `new` is None."""
    name: str
    file: str
    old: str = ""
    new: str | None = None
    cause: str = ""      # in words, for the ground truth: "the comparison in maximum() is flipped"


@dataclass(frozen=True)
class Project:
    name: str
    language: str
    split: str
    runner: str          # unittest | tap | make | script: which parser reads the output
    command: str         # the reference command
    category: str        # run_tests | build | run_script
    variants: tuple[Mutation | None, ...]   # None = the project as written (no fault)
    output_patterns: tuple[str, ...] = ()   # script runners: key output values (first group)
    lint_command: str = ""                  # also make lint tasks (clean and syntax variants)
    diagnose: bool = False                  # also make a diagnose task per fault variant


PROJECTS: tuple[Project, ...] = (
    # ---- train ------------------------------------------------------------------------------------
    Project("calc", "python", "train", "unittest", "python3 -m unittest -v", "run_tests", (
        None,
        Mutation("flip", "calc.py", "if v > best:", "if v < best:", "the comparison in maximum() is flipped"),
        Mutation("offbyone", "calc.py", "range(1, n + 1)", "range(1, n)", "total_range() stops one short"),
        Mutation("syntax", "calc.py", "def mean(values):", "def mean(values)", "a colon is missing after def mean"),
    ), lint_command="python3 -m compileall -q .", diagnose=True),
    Project("inventory", "python", "train", "script", "python3 report.py", "run_script", (
        None,
        Mutation("nofile", "data.csv", cause="data.csv is missing"),
        Mutation("badkey", "report.py", 'row["count"]', 'row["amount"]', "report.py reads a column that does not exist"),
    ), output_patterns=(r"^items: (\d+)", r"^total count: (\d+)")),
    Project("greet", "c", "train", "make", "make", "build", (
        None,
        Mutation("semicolon", "greet.c", "int n = name_length(name);", "int n = name_length(name)",
                 "a semicolon is missing"),
        Mutation("undeclared", "greet.c", "name, n);", "nam, n);", "a misspelled variable"),
        Mutation("nofile", "util.c", cause="util.c is missing"),
    )),
    Project("jsdates", "javascript", "train", "tap", "node --test", "run_tests", (
        None,
        Mutation("flip", "dates.js", "m === 2 && isLeapYear(y)", "m === 2 && !isLeapYear(y)",
                 "daysInMonth() negates the leap-year check"),
    ), diagnose=True),
    Project("deploycheck", "shell", "train", "script", "sh check.sh", "run_script", (
        None,
        Mutation("noconfig", "config.ini", cause="config.ini is missing"),
        Mutation("nokey", "config.ini", "port=8080\n", "", "config.ini has no port key"),
    ), output_patterns=(r"^config ok: (\d+) keys", r"^error: (.+)$")),
    # ---- validation -------------------------------------------------------------------------------
    Project("textkit", "python", "validation", "unittest", "python3 -m unittest -v", "run_tests", (
        None,
        Mutation("flip", "textkit.py", "len(text) <= limit", "len(text) < limit", "is_short() uses < instead of <="),
        Mutation("noimport", "textkit.py", "import re\n", "", "textkit.py does not import re"),
        Mutation("index", "textkit.py", "part[0].upper()", "part[1].upper()", "initials() takes the wrong letter"),
    ), diagnose=True),
    Project("budget", "python", "validation", "script", "python3 summary.py", "run_script", (
        None,
        Mutation("nofile", "expenses.txt", cause="expenses.txt is missing"),
        Mutation("baddata", "expenses.txt", "80.00\n", "n/a\n", "expenses.txt holds a non-number"),
    ), output_patterns=(r"^entries: (\d+)", r"^monthly average: ([\d.]+)")),
    Project("jsstr", "javascript", "validation", "tap", "node --test", "run_tests", (
        None,
        Mutation("noreverse", "strs.js", ".reverse()", "", "reverse() never reverses"),
    )),
    # ---- test -------------------------------------------------------------------------------------
    Project("geometry", "python", "test", "unittest", "python3 -m unittest -v", "run_tests", (
        None,
        Mutation("perimeter", "shapes.py", "2 * (w + h)", "2 * w + h", "rect_perimeter() drops the parentheses"),
        Mutation("key", "shapes.py", '"pentagon": 5', '"pentagram": 5', "the sides table misspells pentagon"),
    ), diagnose=True),
    Project("cstack", "c", "test", "make", "make test", "run_tests", (
        None,
        Mutation("postdec", "stack.c", "s->items[--s->size]", "s->items[s->size--]", "pop() decrements too late"),
    )),
)

REQUESTS = {
    "run_tests": ["Run the {lang} test suite in this repository and tell me which tests fail and why.",
                  "Please run the {lang} tests here and summarize the results for me.",
                  "Can you run the unit tests ({lang}) and report any failures?"],
    "build": ["Build the {lang} project with make and summarize any compiler errors.",
              "Run the build and tell me whether it succeeds; if not, which errors and where."],
    "run_script": ["Run `{command}` and tell me what it prints or why it fails.",
                   "Please execute `{command}` and report the result."],
    "lint": ["Byte-compile all Python files and report any syntax errors with file and line."],
    "diagnose": ["The {lang} tests are failing. Find out which test fails and point me to the likely cause "
                 "in the source."],
}


def templates_hash() -> str:
    """Content hash of everything a built corpus depends on: templates and this builder."""
    h = hashlib.sha256()
    for p in sorted(TEMPLATES.rglob("*")) + [Path(__file__), Path(__file__).with_name("groundtruth.py")]:
        if p.is_file():
            h.update(str(p.relative_to(TEMPLATES.parent)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


class TemplateError(ValueError):
    """A mutation that does not apply to its template (a bug in PROJECTS)."""


def apply_mutation(repo: Path, m: Mutation) -> int:
    """Apply m inside repo; returns the 1-based line of the change (0 for a deleted file)."""
    path = repo / m.file
    if not path.is_file():
        raise TemplateError(f"mutation {m.name}: {m.file} is not in the template {repo}")
    if m.new is None:
        path.unlink()
        return 0
    text = path.read_text()
    if text.count(m.old) != 1:
        raise TemplateError(f"mutation {m.name}: {m.old!r} occurs {text.count(m.old)} times in {m.file}; "
                            "it must occur exactly once")
    line = text[: text.index(m.old)].count("\n") + 1
    path.write_text(text.replace(m.old, m.new))
    return line


@dataclass
class _Spec:
    """One task to build: a project, a variant and a category."""
    project: Project
    variant: Mutation | None
    category: str
    id: str = field(init=False)

    def __post_init__(self):
        self.id = f"{self.project.name}-{self.variant.name if self.variant else 'ok'}-{self.category}"


def specs() -> list[_Spec]:
    out = []
    for p in PROJECTS:
        for v in p.variants:
            out.append(_Spec(p, v, p.category))
            if p.lint_command and (v is None or v.name == "syntax"):   # other faults compile fine
                out.append(_Spec(p, v, "lint"))
            if p.diagnose and v is not None and v.new is not None:
                out.append(_Spec(p, v, "diagnose"))
    return out


def _request(spec: _Spec) -> str:
    options = REQUESTS[spec.category]
    pick = int(hashlib.sha256(spec.id.encode()).hexdigest(), 16) % len(options)
    return options[pick].format(lang={"javascript": "JavaScript", "c": "C"}.get(spec.project.language,
                                                                             spec.project.language.capitalize()),
                                command=spec.project.command)


def _facts(spec: _Spec, output: str) -> tuple[list[Fact], dict]:
    runner = "script" if spec.category == "lint" else spec.project.runner
    if runner == "unittest":
        return unittest_facts(output)
    if runner == "tap":
        return tap_facts(output)
    if runner == "make":
        return build_facts(output), {}
    facts = python_traceback_facts(output) if "Traceback" in output or "Error" in output else []
    return facts + output_facts(output, list(spec.project.output_patterns)), {}


def _status(code: int, category: str, facts: list[Fact]) -> str:
    if code == 0:
        return "success"
    if category in ("run_tests", "diagnose") and any(f.kind == "failing_test" for f in facts):
        return "failure"
    return "error"


def reference_report(command: str, code: int, status: str, facts: list[Fact]) -> str:
    """The ideal report: short, every ground-truth fact stated, nothing pasted."""
    main = [f.value for f in facts if f.kind != "cause"]
    if status == "success":
        summary = f"`{command}` succeeds" + (f": {main[-1]}." if main else ".")
    else:
        summary = f"`{command}` fails (exit {code})" + (f": {main[0]}." if main else ".")
    details = "; ".join(f.value for f in facts) + f". Exit status {code}."
    return (f"<report><status>{status}</status><summary>{summary}</summary>"
            f"<details>{details}</details></report>")


async def _build_one(spec: _Spec, out: Path, sandbox_cfg, limit: asyncio.Semaphore) -> Task:
    from sandbox import open_sandbox

    p, v = spec.project, spec.variant
    repo = out / "repos" / spec.id
    shutil.copytree(TEMPLATES / p.name, repo)
    line = apply_mutation(repo, v) if v else 0
    command = p.lint_command if spec.category == "lint" else p.command
    commands = [command]
    cause_fact = None
    if spec.category == "diagnose":
        mutated = (v.new or "").strip().splitlines()[0] if (v.new or "").strip() else ""
        # What an expert does next: look at the suspicious line (grep -H prints file:line).
        commands.append(f"grep -HnF {shlex.quote(mutated)} {v.file}" if mutated else f"grep -Hn '' {v.file}")
        cause_fact = location_fact(v.file, line, style="colon")
        cause_fact = Fact("cause", f"likely cause: {v.cause} ({cause_fact.value})", cause_fact.patterns)
    async with limit:
        async with await open_sandbox(sandbox_cfg, str(repo)) as sb:
            results = [await sb.run(c, timeout_s=60) for c in commands]
    first = results[0]
    facts, observed = _facts(spec, first.output)
    if cause_fact is not None:
        facts.append(cause_fact)
    if not facts and first.exit_code == 0:   # a clean run with nothing to parse: success is the fact
        facts.append(Fact("exit_status", "it completes without errors", [r"without errors?|no errors?|succe"]))
    status = _status(first.exit_code, spec.category, facts)
    report = reference_report(command, first.exit_code, status, facts)
    observed.update(outputs=[r.output for r in results], exit_codes=[r.exit_code for r in results])
    task = Task(id=spec.id, language=p.language, category=spec.category, project=p.name,
                repo_dir=f"repos/{spec.id}", request=_request(spec),
                ground_truth=GroundTruth(exit_status=first.exit_code, facts=facts, observed=observed),
                reference=ReferenceSolution(commands=commands, report=report), split=p.split)
    check_reference(task)
    return task


def check_reference(task: Task) -> None:
    """Every fact must be checkable in the reference report, or the corpus is inconsistent."""
    said = re.sub(r"<status>.*?</status>", "", task.reference.report)   # what a judge reads: summary, details
    for f in task.ground_truth.facts:
        for pat in f.patterns:
            if not re.search(pat, said, re.IGNORECASE | re.MULTILINE):
                raise TemplateError(f"task {task.id}: the reference report does not state fact {f.value!r} "
                                    f"(pattern {pat!r})")
    if not task.ground_truth.facts:
        raise TemplateError(f"task {task.id}: no ground-truth fact was found in the output of "
                            f"{task.reference.commands[0]!r}; observed: {task.ground_truth.observed}")


async def build_builtin(out: Path, sandbox_cfg, concurrency: int = 4) -> list[Task]:
    """Build every built-in task into `out` (repos/ + one JSONL per split); returns the tasks."""

    (out / "repos").mkdir(parents=True, exist_ok=True)
    limit = asyncio.Semaphore(concurrency)
    tasks = await asyncio.gather(*[_build_one(s, out, sandbox_cfg, limit) for s in specs()])
    write_corpus(out, list(tasks), source=f"builtin templates {templates_hash()}")
    return list(tasks)
