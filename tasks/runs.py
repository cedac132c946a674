"""Reference runs of a real project's commands, and the tasks made from them: the pieces that
tasks.real (run_tests, discover_tests) and tasks.kinds (run_one_test, build, lint) share.

A fact enters a task only when its evidence is in what the reference commands printed, as an
episode shows it (each output capped at the observation cap, then framed by the protocol).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.protocol import Observation, format_observation
from sandbox import format_output
from tasks.builtin import Mutation, check_reference, reference_report
from tasks.groundtruth import count_fact, missing_evidence
from tasks.manifest import Entry, split_of
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task, TaskEnvironment


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


# what a runner prints its totals in (no timings: evidence must read the same in every run)
_SUMMARY_LINES = {
    "pytest": re.compile(r"^[= ]*\d+ (?:passed|failed|errors?)\b.*? in [\d.]+s", re.MULTILINE),
    "unittest": re.compile(r"^(?:Ran \d+ tests?|OK\b.*|FAILED \(.*\))$", re.MULTILINE),
    "tap": re.compile(r"^# (?:tests|pass|fail) \d+$", re.MULTILINE),
    "automake": re.compile(r"^# (?:TOTAL|PASS|FAIL|ERROR): +\d+$", re.MULTILINE),
    "ctest": re.compile(r"^\d+% tests passed, \d+ tests? failed out of \d+$", re.MULTILINE),
    "junit": re.compile(r"^\[ +\d+ tests (?:successful|failed|found) +\]$", re.MULTILINE),
}


_PYTEST_COUNT = re.compile(r"\b\d+ (?:passed|failed|errors?)\b")


def summary_evidence(runner: str, output: str) -> list[str]:
    """The runner's totals as printed (pytest's and unittest's without their timings)."""
    if runner not in _SUMMARY_LINES:
        return []
    found = [m.group(0) for m in _SUMMARY_LINES[runner].finditer(output)]
    if runner == "pytest":   # "=== 2 failed, 5 passed in 0.12s ===" -> "2 failed", "5 passed"
        found = [c for line in found[-1:] for c in _PYTEST_COUNT.findall(line)]
    return found


def result_facts(results: dict[str, str], runner: str = "unittest", output: str = "") -> list[Fact]:
    """Failing tests (up to 5) and the counts. A test's evidence is its name; the counts' evidence is
    the runner's summary lines in `output` (none there: the counts are unobservable). TAP counts its
    test points, which for tape are assertions, so its counts say so."""
    failing = sorted(t for t, s in results.items() if failed(s))
    facts = []
    for short in list(dict.fromkeys(short_name(t, runner) for t in failing))[:5]:
        facts.append(Fact("failing_test", f"{short} fails", [re.escape(short)], [short]))
    counts = count_fact(len(failing), len(results), "TAP assertions" if runner == "tap" else "tests")
    counts.evidence = summary_evidence(runner, output)
    return facts + [counts]


def observable(facts: list[Fact], seen: str) -> tuple[list[Fact], list[Fact]]:
    """(kept, dropped): a fact is kept when all its evidence is in `seen`, what the agent saw."""
    kept = [f for f in facts if not missing_evidence(f, seen)]
    return kept, [f for f in facts if f not in kept]


@dataclass
class Run:
    """One reference command as the build ran it: the whole output and the exit code."""
    command: str
    output: str
    exit_code: int


def evidence_by_patterns(fact: Fact, seen: str) -> list[str]:
    """Evidence for a fact recorded without any: what each of its report patterns matches in what the
    agent saw ([] when one matches nothing: the fact is not observable)."""
    found = [re.search(p, seen, re.IGNORECASE | re.MULTILINE) for p in fact.patterns]
    return [m.group(0) for m in found] if found and all(found) else []


def make_task(entry: Entry, tid: str, category: str, request: str, runs: list[Run], facts: list[Fact],
              env: TaskEnvironment, repo: str, setup: list[str], cap: int, dropped: dict[str, int],
              observed: dict | None = None) -> Task:
    """A task whose reference solution is `runs`' commands and whose ground truth is `facts`, kept
    only where what the agent sees of the runs (each output capped at `cap`) shows them; the last
    run is the one the report is about."""
    capped = [format_output(r.output.encode(), limit=cap) for r in runs]   # (text, truncated): what an episode shows
    seen = "\n".join(format_observation(Observation(r.exit_code, text, truncated=cut), turns_left=1)
                     for r, (text, cut) in zip(runs, capped))
    for f in facts:
        f.evidence = f.evidence or evidence_by_patterns(f, seen)
    facts, lost = observable(facts, seen)
    for f in lost:
        dropped[f.kind] = dropped.get(f.kind, 0) + 1
    code = runs[-1].exit_code
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
                 commands[-1], code, status, [f for f in facts if f.kind != "exit_status"])),
             split=split_of(entry.name), environment=env)
    check_reference(t)
    return t


def mutation_record(m: Mutation, line: int) -> dict:
    """Where a fault was injected, as a task records it (`observed["mutation"]`, for analysis)."""
    return {"operator": m.name, "file": m.file, "line": line, "cause": m.cause}


def copy_source(root: Path, dest: Path) -> None:
    """A task's repository snapshot: the project without its node_modules (shared, bound read-only)."""
    shutil.copytree(root, dest, symlinks=True, ignore=lambda d, names: ["node_modules"] if Path(d) == root else [])

