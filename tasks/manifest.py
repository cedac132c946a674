"""The manifest of real projects a corpus is built from, and the checks that keep bad ones out.

A manifest is JSONL (one project per line, so it scales to thousands and diffs line by line):

    {"name": "six", "ecosystem": "pypi", "version": "1.16.0", "language": "python",
     "test_command": "python3 -m pytest -q", "setup": []}
    {"name": "cjson", "ecosystem": "debian", "version": "1.7.15-1+deb12u4", "language": "c",
     "setup": ["cmake -B build", "cmake --build build -j2"], "test_command": "ctest --test-dir build",
     "runner": "ctest"}

Ecosystems: pypi (sdists), npm (tarballs), debian (source packages of Debian bookworm: the upstream
tarball, for C/C++ and Java projects; the version is Debian's, epoch included, e.g. 1:1.2.13.dfsg-1), local.

`load_manifest` returns the valid entries AND the problems of the invalid ones (never silently
dropped). `check_project` runs a project's test command twice in a real sandbox, with a different
hash seed each time (order-dependent tests are the commonest flakiness), and classifies it:
runs (usable), cannot_run (no test results: missing dependency, import error...) or flaky
(per-test results differ between the runs).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

ECOSYSTEMS = ("pypi", "npm", "debian", "crates", "local")
LANGUAGES = ("python", "javascript", "typescript", "java", "c", "cpp", "rust", "shell")
RUNNERS = ("unittest", "pytest", "tap", "automake", "ctest", "junit", "surefire")
_PYTEST_LINE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", re.MULTILINE)
_TAP_LINE = re.compile(r"^(not ok|ok) (\d+) (?:- )?(.*)$", re.MULTILINE)
# automake's parallel test harness (`make check`): "PASS: name", "FAIL: name", ...
_AUTOMAKE_LINE = re.compile(r"^(PASS|FAIL|XFAIL|XPASS|ERROR|SKIP): (\S+)", re.MULTILINE)
# ctest: " 3/19 Test  #3: parse_number .......   Passed    0.01 sec" / "***Failed" / "***Exception: SegFault"
_CTEST_LINE = re.compile(r"^\s*\d+/\d+ Test\s+#\d+: (\S+) [ .*]*?"
                         r"(Passed|Failed|Not Run|Timeout|Exception|Skipped|Subprocess aborted)\b", re.MULTILINE)
_CTEST_STATUS = {"Passed": "PASS", "Failed": "FAIL", "Skipped": "SKIP"}   # anything else: ERROR
# the JUnit Platform console launcher's tree: "│  ├─ testName ✔" / "└─ testName ✘ message" / "↷" skipped
_JUNIT_LINE = re.compile(r"^((?:[│ ]  )*)[├└]─ (.*?) ([✔✘↷■])(?: .*)?$")
_JUNIT_STATUS = {"✔": "PASS", "✘": "FAIL", "↷": "SKIP", "■": "SKIP"}   # aborted: an assumption not met
# Maven Surefire with its plain report on the console (`-Dsurefire.useFile=false
# -Dsurefire.reportFormat=plain`): "[INFO] name(pkg.Class)  Time elapsed: 0.01 s", then
# "  <<< FAILURE!" (an assertion), "<<< ERROR!" (an exception) or "<<< SKIPPED!" after a test that did not pass
_SUREFIRE_LINE = re.compile(r"^\[[A-Z]+\] (.+?)\(([\w.$]+)\)  Time elapsed: [\d.,]+ s(?:  <<< (FAILURE|ERROR|SKIPPED)!)?$",
                            re.MULTILINE)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@/+-]*$")   # never "~": tasks.runs.ID_SEP


@dataclass(frozen=True)
class Entry:
    name: str
    ecosystem: str
    version: str
    language: str
    test_command: str
    setup: tuple[str, ...] = ()
    runner: str = "unittest"     # which parser reads the test output (RUNNERS)
    path: str = ""               # ecosystem "local": the project's directory (tests, local mirrors)
    test_deps: tuple[str, ...] = ()   # Python: what its tests import, from PyPI (pinned, e.g. "pyyaml==6.0.1")

    @property
    def key(self) -> str:
        return f"{self.ecosystem}:{self.name}=={self.version}"


@dataclass
class ManifestProblem:
    line: int
    entry: str
    reason: str


def _problem(d: dict) -> str:
    """Why an entry is unusable ('' when it is fine)."""
    missing = [k for k in ("name", "ecosystem", "version", "language", "test_command") if not d.get(k)]
    if missing:
        return f"missing {', '.join(missing)}"
    if d["ecosystem"] not in ECOSYSTEMS:
        return f"unknown ecosystem {d['ecosystem']!r}; use one of {', '.join(ECOSYSTEMS)}"
    if d["language"] not in LANGUAGES:
        return f"unknown language {d['language']!r}; use one of {', '.join(LANGUAGES)}"
    if not _NAME.match(str(d["name"])):
        return f"bad project name {d['name']!r}"
    version = str(d["version"])
    if d["ecosystem"] == "debian":   # Debian's own version: [epoch:]upstream[-revision]
        if not re.match(r"^(\d+:)?[0-9][0-9A-Za-z.+~]*(-[0-9A-Za-z.+~]+)*$", version):   # upstream may hold '-'
            return (f"version {version!r} is not an exact Debian source version (pin one as `apt-cache showsrc` "
                    "prints it, e.g. 1.7.15-1+deb12u4 or 1:1.2.13.dfsg-1)")
    elif not re.match(r"^[0-9A-Za-z][0-9A-Za-z.+-]*$", version) or version in ("latest", "*"):
        return f"version {version!r} is not an exact version (pin one, e.g. 1.2.3)"
    if d["ecosystem"] == "local" and not Path(d.get("path", "")).is_dir():
        return f"local project path {d.get('path', '')!r} is not a directory"
    if d.get("runner", "unittest") not in RUNNERS:
        return f"unknown runner {d['runner']!r}; use one of {', '.join(RUNNERS)}"
    if not isinstance(d.get("test_deps", []), list) or not all(isinstance(x, str) for x in d.get("test_deps", [])):
        return "test_deps must be a list of requirement strings (e.g. [\"pyyaml==6.0.1\"])"
    unknown = set(d) - {"name", "ecosystem", "version", "language", "test_command", "setup", "runner", "path",
                        "test_deps"}
    if unknown:
        return f"unknown field(s) {', '.join(sorted(unknown))}"
    return ""


def load_manifest(path: str | Path) -> tuple[list[Entry], list[ManifestProblem]]:
    """Valid entries, and one problem per bad line (unparsable, invalid, or a duplicate project)."""
    entries: list[Entry] = []
    problems: list[ManifestProblem] = []
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            d = json.loads(line)
            if not isinstance(d, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            problems.append(ManifestProblem(n, line[:80], f"not valid JSON ({e})"))
            continue
        if why := _problem(d):
            problems.append(ManifestProblem(n, line[:80], why))
            continue
        if (d["ecosystem"], d["name"]) in seen:
            problems.append(ManifestProblem(n, line[:80], f"duplicate project {d['name']} (listed earlier)"))
            continue
        seen.add((d["ecosystem"], d["name"]))
        entries.append(Entry(d["name"], d["ecosystem"], str(d["version"]), d["language"], d["test_command"],
                             tuple(d.get("setup", ())), d.get("runner", "unittest"), d.get("path", ""),
                             tuple(d.get("test_deps", ()))))
    return entries, problems


def _rank(project: str) -> str:
    return hashlib.sha256(project.encode()).hexdigest()


def split_of(project: str, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    """A stable split by project name (a hash), so a project never straddles splits and adding
    projects to the manifest does not move existing ones."""
    x = int(_rank(project)[:8], 16) / 0xFFFFFFFF
    return "train" if x < fractions[0] else "validation" if x < fractions[0] + fractions[1] else "test"


SPLIT_ORDER = ("validation", "test")   # the held-out splits, filled in this order


def stratified_splits(projects: list[tuple[str, str, set[str]]], held_out: float = 0.1) -> dict[str, str]:
    """Splits by repository, stratified by language and task kind. `projects`: (name, language, the
    kinds of its tasks) of each built project. Within each language, ranked by a hash of their names,
    round(held_out * n) projects go to validation and as many to test (at least one each from three
    projects up), the rest to train; a held-out split first takes, for each kind that at least three
    of the language's projects have, the first-ranked project with it. Then, across languages, a
    kind that at least three projects have and a held-out split lacks moves its first-ranked train
    project there (while train keeps one). A project never straddles splits; its split depends only
    on the built projects, not on the order they were built in."""
    by_language: dict[str, dict[str, set[str]]] = {}
    for name, language, kinds in projects:
        by_language.setdefault(language, {}).setdefault(name, set()).update(kinds)
    splits: dict[str, str] = {}
    for language in sorted(by_language):   # a name under two languages keeps its first language's split
        members = by_language[language]
        ranked = sorted(members, key=_rank)
        quota = max(1, round(held_out * len(ranked))) if len(ranked) >= 3 else 0
        common = sorted(k for k in set().union(*members.values()) if sum(k in ks for ks in members.values()) >= 3)
        for split in SPLIT_ORDER:
            free = [n for n in ranked if n not in splits]
            chosen: list[str] = []
            for kind in common:   # one project of each common kind first, as far as the quota goes
                if len(chosen) < quota and not any(kind in members[n] for n in chosen):
                    chosen += [n for n in free if kind in members[n] and n not in chosen][:1]
            chosen += [n for n in free if n not in chosen][:quota - len(chosen)]
            splits.update({n: split for n in chosen})
        splits.update({n: "train" for n in ranked if n not in splits})
    kinds_of = {n: ks for members in by_language.values() for n, ks in members.items()}
    for kind in sorted(set().union(*kinds_of.values())):
        having = sorted((n for n, ks in kinds_of.items() if kind in ks), key=_rank)
        for split in SPLIT_ORDER:
            train = [n for n in having if splits[n] == "train"]
            if len(having) >= 3 and len(train) >= 2 and not any(splits[n] == split for n in having):
                splits[train[0]] = split
    return splits


@dataclass
class ProjectCheck:
    verdict: str                  # runs | cannot_run | flaky
    reason: str = ""
    results: list[dict] = field(default_factory=list)   # per run: test name -> status
    exit_codes: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)   # seconds of each test run
    probe: str = ""               # what the `probe` command printed (first run, after the setup)
    setup_failed: bool = False    # cannot_run because a setup command failed (the tests did not run)


def _parse(runner: str, output: str) -> dict[str, str]:
    """Per-test results; empty when no test really ran (a module that failed to import counts as
    none: unittest reports it as a pseudo-test of `_FailedTest`)."""
    from tasks.groundtruth import unittest_facts
    if runner == "pytest":
        return dict(_PYTEST_LINE.findall(output))
    if runner == "tap":   # tape and node --test both print "ok N [- ]description"
        return {f"{n} {d.strip()}": st for st, n, d in _TAP_LINE.findall(output)}
    if runner == "automake":
        return {name: st for st, name in _AUTOMAKE_LINE.findall(output)}
    if runner == "ctest":
        return {name: _CTEST_STATUS.get(st, "ERROR") for name, st in _CTEST_LINE.findall(output)}
    if runner == "junit":
        return junit_tree_results(output)
    if runner == "surefire":   # named like the console launcher's leaves: `Class::method`
        return {f"{cls.rsplit('.', 1)[-1]}::{name}": {"FAILURE": "FAIL", "ERROR": "ERROR", "SKIPPED": "SKIP"}.get(st, "PASS")
                for name, cls, st in _SUREFIRE_LINE.findall(output)}
    results = unittest_facts(output)[1]["tests"]
    failed_loads = set(re.findall(r"^(\w+) \(unittest\.loader\._FailedTest", output, re.MULTILINE))
    return {} if set(results) <= failed_loads else results


def junit_tree_results(output: str) -> dict[str, str]:
    """Per-test results from the JUnit console launcher's tree (`--details=tree`, its default): the
    leaves are tests, named `Class::method` (engines left out, `()` dropped; a parameterized case is
    `method[1]`); a container that failed without children (a class that cannot load) counts too."""
    nodes = []   # (depth, name, status)
    for line in output.splitlines():
        m = _JUNIT_LINE.match(line)
        if m:
            name = re.sub(r"\s+\d+ ms$", "", m.group(2).strip())   # a slow test's duration is not its name
            nodes.append((len(m.group(1)) // 3, name, _JUNIT_STATUS[m.group(3)]))
    results, path = {}, []
    for i, (depth, name, status) in enumerate(nodes):
        path[depth:] = [name.removesuffix("()")]
        if depth == 0 or (i + 1 < len(nodes) and nodes[i + 1][0] > depth):
            continue   # a container (engine, class, parameterized method) or an engine without tests
        parts = path[1:]
        if parts and parts[-1].startswith("[") and len(parts) > 1:   # "[1] a, b" under "method(int)"
            parts = [*parts[:-2], f"{parts[-2].split('(')[0]}{parts[-1].split(' ')[0]}"]
        results["::".join(parts)] = status
    return results


async def check_project(repo_dir: str, entry: Entry, sandbox_cfg, timeout_s: float = 300,
                        environment=None, snapshot: str = "", setup_timeout_s: float | None = None,
                        probe: str = "") -> ProjectCheck:
    """Run the test command twice (hash seeds 1 and 2) in fresh sandboxes and compare.

    `environment`: the tasks.types.TaskEnvironment the commands run with (its paths absolute).
    `snapshot`: a host directory that receives a copy of the first sandbox's repository right after
    the setup (the built tree), so fault runs rebuild incrementally instead of from scratch.
    `probe`: a command run once after the setup, before the tests (e.g. `ls`: what an agent sees first)."""
    from tasks.types import TaskEnvironment

    check = ProjectCheck("runs")
    environment = environment or TaskEnvironment()
    for seed in ("1", "2"):
        async with await environment.open_sandbox(sandbox_cfg, repo_dir, env={"PYTHONHASHSEED": seed}) as sb:
            for cmd in entry.setup:
                r = await sb.run(cmd, timeout_s=setup_timeout_s or timeout_s)
                if r.exit_code != 0 or r.timed_out:
                    return ProjectCheck("cannot_run", f"setup `{cmd}` exited {r.exit_code}: {why_failed(r.output)}",
                                        setup_failed=True)
            if snapshot and seed == "1" and entry.setup:
                await asyncio.to_thread(_snapshot, sb, snapshot)
            if probe and seed == "1":
                check.probe = (await sb.run(probe, timeout_s=60)).output
            r = await sb.run(entry.test_command, timeout_s=timeout_s)
        if r.timed_out:
            return ProjectCheck("cannot_run", f"tests timed out after {timeout_s:.0f} s")
        results = _parse(entry.runner, r.output)
        if not results:
            return ProjectCheck("cannot_run", f"no test results (exit {r.exit_code}): {why_failed(r.output)}")
        check.results.append(results)
        check.outputs.append(r.output)
        check.exit_codes.append(r.exit_code)
        check.durations.append(r.duration_s)
    a, b = check.results
    differ = sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))
    if differ or check.exit_codes[0] != check.exit_codes[1]:
        check.verdict = "flaky"
        check.reason = f"results differ between two runs: {', '.join(differ) or 'exit status'}"
    return check


_MISSING = re.compile(r"No module named '?([\w.]+)|Cannot find module '([^']+)'|cannot find -l(\S+)|"
                      r"fatal error: ([\w./-]+): No such file|command not found: (\S+)|(\S+): command not found|"
                      r"package ([\w.]+) does not exist")
# Maven's first error (its output ends in the same help lines whatever failed)
_MAVEN_FIRST_ERROR = re.compile(r"^\[ERROR\] (?!COMPILATION ERROR)(\S.*)$", re.MULTILINE)


def why_failed(output: str, tail: int = 300) -> str:
    """An exclusion reason from a failed run's output: the missing modules, libraries or commands it
    names first (they are often far above the tail), Maven's first error, then the output's tail."""
    missing = list(dict.fromkeys(next(g for g in m.groups() if g) for m in _MISSING.finditer(output)))
    head = f"missing: {', '.join(missing[:5])}; " if missing else ""
    if m := _MAVEN_FIRST_ERROR.search(output):
        head += f"Maven: {m.group(1)[:tail]}; "
    return head + output[-tail:].strip()


def _snapshot(sb, dest: str) -> None:
    """Copy a sandbox's (built) repository to the host directory dest; backends without a host-side
    view of it (docker, podman) give none, and fault runs then build from scratch."""
    import shutil
    src = getattr(getattr(sb, "workspace", None), "repo", "")
    if src and Path(src).is_dir():
        shutil.copytree(src, dest, symlinks=True)
