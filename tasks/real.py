"""Tasks from real open-source projects listed in a manifest (tasks/manifests/*.jsonl).

For each entry: fetch the source through its package registry (PyPI sdist with `pip download
--no-binary :all:`, npm tarball with `npm pack`, a Debian source package's upstream tarball with
`apt-get source --download-only` against private package lists), check in a sandbox that its tests run and are not
flaky (tasks.manifest.check_project), then make tasks:
  - run_tests on the project as released (ground truth: the per-test results of the real run);
  - one run_tests task per injected fault (flipped comparison, off-by-one, flipped boolean) that makes
    tests fail, applied to a real source file at a recorded line, so the ground truth names the cause.
Projects that cannot be fetched, whose tests cannot run, or that are flaky are excluded and the
reason is recorded in the corpus summary.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tasks.builtin import Mutation, apply_mutation, check_reference, reference_report
from tasks.manifest import Entry, _parse, check_project, split_of
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task

# (operator name, old, new, cause): applied to the first matching source line of a file
OPERATORS = (("flip_eq", " == ", " != ", "an equality test is negated"),
             ("offbyone", " + 1", " + 2", "an off-by-one change (+ 1 became + 2)"),
             ("flip_lt", " < ", " >= ", "a comparison is flipped (< became >=)"),
             ("flip_bool", "return True", "return False", "a function returns False instead of True"),
             ("flip_ne", " != ", " == ", "an inequality test is negated (!= became ==)"))
SOURCE_EXT = {"python": (".py",), "javascript": (".js",), "typescript": (".ts",), "java": (".java",),
              "c": (".c", ".h"), "cpp": (".cpp", ".cc", ".cxx", ".c", ".hpp", ".hh", ".h")}
HEADERS = (".h", ".hh", ".hpp")
COMPILED = ("c", "cpp", "java")   # languages whose sources are compiled by the project's setup
# directories whose sources are not the library under test (or not built by the default build)
SKIP_DIRS = {"node_modules", "build", "example", "examples", "fuzz", "fuzzing", "ossfuzz", "bench", "benchmark",
             "benchmarks", "contrib", "doc", "docs", "demo", "demos", "vendor", "third_party", "debian"}
MAX_FAULTS = 6
MAX_FAULT_TRIES = 16           # mutations tried per project (each one is a sandboxed test run)...
MAX_FAULT_TRIES_COMPILED = 10  # ...and per C/C++ project, where each one is also a rebuild
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
REQUESTS = ("Run the test suite of {name} (`{cmd}`) and tell me what fails, if anything.",
            "Can you run `{cmd}` in this repo and report which tests fail and why?",
            "I changed some code in {name}. Run the tests (`{cmd}`) and summarize the results.",
            "Check whether the {name} tests pass: `{cmd}`. If not, which ones fail and what is the likely cause?",
            "Please run `{cmd}` and give me the pass/fail counts and any failing test names.")


def sandbox_env() -> dict:
    """Python projects run with this venv's interpreter and pytest (bound read-only)."""
    return {"PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}


def sandbox_config(base=None):
    """The builder's sandboxes: this venv visible, and the whole test output kept (the episode's
    observation cap would drop the middle of a long run, and with it per-test results)."""
    from rollout.config import SandboxConfig
    cfg = base or SandboxConfig()
    cfg.ro_binds = list(dict.fromkeys([*cfg.ro_binds, sys.prefix, sys.base_prefix]))
    cfg.output_limit_bytes = max(cfg.output_limit_bytes, 16 << 20)
    return cfg


_DEBIAN_LOCK = threading.Lock()
_debian_ready: set[str] = set()


def debian_state(root: Path | None = None) -> list[str]:
    """apt-get options that use private Debian source lists (never the system's apt configuration),
    under ~/.cache/terminus/debian-apt; the lists are downloaded once per process."""
    if root is None:
        from terminus.model import cache_root
        root = cache_root() / "debian-apt"
    opts = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={root}/sources",
            "-o", f"Dir::State::Lists={root}/lists", "-o", f"Dir::Cache={root}/cache"]
    with _DEBIAN_LOCK:
        if str(root) in _debian_ready:
            return opts
        for d in ("sources", "lists/partial", "cache/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "sources" / "debian-src.sources").write_text(
            f"Types: deb-src\nURIs: {DEBIAN_MIRROR}\nSuites: {DEBIAN_SUITE}\nComponents: main\n"
            f"Signed-By: {DEBIAN_KEYRING}\n")
        r = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"apt-get update of the Debian source lists failed: {(r.stderr or r.stdout)[-300:]}")
        _debian_ready.add(str(root))
    return opts


def _fetch_debian(entry: Entry, dest: Path) -> Path:
    """The upstream tarball of a Debian source package (NAME_UPSTREAM.orig.tar.*, or the one tarball of
    a native package); the Debian packaging itself is not needed."""
    r = subprocess.run(["apt-get", *debian_state(), "source", "--download-only", f"{entry.name}={entry.version}"],
                       cwd=dest, capture_output=True, text=True, timeout=600)
    tars = sorted(p for p in dest.iterdir() if ".tar." in p.name and not p.name.endswith(".asc")
                  and ".debian.tar." not in p.name and ".orig-" not in p.name)
    if not tars:
        errors = [line for line in (r.stderr or r.stdout).splitlines() if line.startswith("E:")]
        raise RuntimeError(f"apt-get source {entry.name}={entry.version} failed: {' '.join(errors)[-300:]}")
    return tars[0]


def fetch(entry: Entry, dest: Path) -> Path:
    """Download and unpack the project's source; returns its root directory."""
    dest.mkdir(parents=True, exist_ok=True)
    if entry.ecosystem == "local":
        shutil.copytree(entry.path, dest / "src" / entry.name, symlinks=True)
        return dest / "src" / entry.name
    if entry.ecosystem == "debian":
        archives = [_fetch_debian(entry, dest)]
    elif entry.ecosystem == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", f"{entry.name}=={entry.version}", "-d", str(dest)]
    elif entry.ecosystem == "npm":
        cmd = ["npm", "pack", "--silent", f"{entry.name}@{entry.version}", "--pack-destination", str(dest)]
    else:
        raise RuntimeError(f"ecosystem {entry.ecosystem} cannot be fetched by this builder")
    if entry.ecosystem != "debian":
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        archives = [p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".tgz", ".zip"))]
        if r.returncode != 0 or not archives:
            raise RuntimeError(f"fetch failed: {(r.stderr or r.stdout).strip()[-300:]}")
    if archives[0].suffix == ".zip":
        shutil.unpack_archive(archives[0], dest / "src")
    else:
        with tarfile.open(archives[0]) as tf:
            tf.extractall(dest / "src", filter="data")
    roots = list((dest / "src").iterdir())
    root = roots[0] if len(roots) == 1 and roots[0].is_dir() else dest / "src"
    if entry.ecosystem == "npm":   # dev dependencies (the test runner) from the registry, no scripts run
        r = subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--silent"],
                           cwd=root, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"npm install of dev dependencies failed: {r.stderr.strip()[-300:]}")
    subprocess.run(["chown", "-R", "0:0", str(root)], check=False)   # bwrap drops caps: own the files
    return root


def failed(status: str) -> bool:
    """A per-test status from any runner (pytest, unittest, TAP) that means the test did not pass."""
    return status in ("FAILED", "ERROR", "FAIL", "not ok")


def result_facts(results: dict[str, str]) -> list[Fact]:
    failing = sorted(t for t, s in results.items() if failed(s))
    n = len(results)
    facts = []
    for short in list(dict.fromkeys(t.rsplit("::", 1)[-1] for t in failing))[:5]:
        facts.append(Fact("failing_test", f"{short} fails", [re.escape(short)]))
    if failing:
        facts.append(Fact("counts", f"{len(failing)} of {n} tests fail", [rf"\b{len(failing)}\b"]))
    else:
        facts.append(Fact("counts", f"all {n} tests pass" if n else "no tests", [r"pass|ok|succe"]))
    return facts


def _compiled_stems(built: Path) -> set[str]:
    """Source names that a build tree holds objects of: cmake's foo.c.o, make's foo.o, libtool's
    libx_la-foo.lo / foo.lo."""
    stems = set()
    for p in built.rglob("*"):
        if p.suffix in (".o", ".lo", ".obj") and p.is_file():
            stem = p.name.rsplit(".", 1)[0]
            stems.add(stem)
            stems.add(stem.rsplit("-", 1)[-1])
    return stems


def source_files(root: Path, language: str, built: Path | None = None) -> list[Path]:
    """The project's own (non-test) source files, most useful first. For compiled languages with a
    built tree, sources that were compiled come first, then headers; other files are left out."""
    exts = SOURCE_EXT.get(language, ())
    files = sorted(p for p in root.rglob("*") if p.suffix in exts and p.is_file() and not p.is_symlink()
                   and "test" not in str(p.relative_to(root)).lower() and "setup" not in p.name
                   and not p.name.endswith(".d.ts") and not SKIP_DIRS & {d.lower() for d in p.relative_to(root).parts[:-1]})
    if language not in COMPILED or built is None:
        return files
    stems = _compiled_stems(built)
    if not stems:   # no object files kept (a build that deletes them): sources first, then headers
        return [p for p in files if p.suffix not in HEADERS] + [p for p in files if p.suffix in HEADERS]
    compiled = [p for p in files if p.suffix not in HEADERS and (p.name in stems or p.stem in stems)]
    return compiled + [p for p in files if p.suffix in HEADERS]


def _comment(line: str) -> bool:
    return line.strip().startswith(("#", "//", "/*", "*"))


def fault_candidates(root: Path, language: str, built: Path | None = None) -> list[Mutation]:
    """Mutations of real source lines (not tests), each a unique line so it applies exactly once."""
    out = []
    for path in source_files(root, language, built):
        text = path.read_text(errors="replace")
        for name, old, new, cause in OPERATORS:
            for line in text.splitlines():
                if old in line and text.count(line) == 1 and not _comment(line):
                    out.append(Mutation(f"{name}", str(path.relative_to(root)), line,
                                        line.replace(old, new, 1), cause))
                    break
    return out


@dataclass
class Outcome:
    entry: Entry
    tasks: list[Task]
    excluded: str = ""


def _task(entry: Entry, tid: str, repo: str, results: dict, code: int, cause: Fact | None) -> Task:
    facts = result_facts(results) + ([cause] if cause else [])
    status = "success" if code == 0 else "failure"
    cmd = entry.test_command
    pick = int(hashlib.sha256(tid.encode()).hexdigest(), 16) % len(REQUESTS)
    req = REQUESTS[pick].format(name=entry.name, cmd=cmd)
    t = Task(id=tid, language=entry.language, category="run_tests", project=entry.name, repo_dir=repo,
             request=req, setup=list(entry.setup),
             ground_truth=GroundTruth(exit_status=code, facts=facts, observed={"tests": results}),
             reference=ReferenceSolution([cmd], reference_report(cmd, code, status, facts)),
             split=split_of(entry.name))
    check_reference(t)
    return t


async def build_project(entry: Entry, out: Path, work: Path, sandbox_cfg) -> Outcome:
    try:
        root = await asyncio.to_thread(fetch, entry, work / entry.name)
    except Exception as e:   # noqa: BLE001 - any fetch failure excludes the project, with its reason
        return Outcome(entry, [], f"fetch: {e}")
    env = sandbox_env()
    built = work / f"{entry.name}.built"   # the tree after the setup (a build): fault runs rebuild from it
    shutil.rmtree(built, ignore_errors=True)
    chk = await check_project(str(root), entry, sandbox_cfg, env=env, snapshot=str(built))
    if chk.verdict != "runs":
        return Outcome(entry, [], f"{chk.verdict}: {chk.reason}")
    base = f"{entry.ecosystem}-{entry.name}".replace("/", "_").replace("@", "")
    tasks: list[Task] = []
    repo = out / "repos" / base
    shutil.copytree(root, repo, symlinks=True)
    tasks.append(_task(entry, base, f"repos/{base}", chk.results[0], chk.exit_codes[0], None))
    baseline_fail = {t for t, s in chk.results[0].items() if failed(s)}
    from rollout.sandbox import open_sandbox
    prebuilt = built if built.is_dir() else None
    # a fault that makes a test loop forever must not cost the full timeout: a few times the clean run
    fault_timeout = min(300.0, max(30.0, 4 * max(chk.durations)))
    tries = MAX_FAULT_TRIES_COMPILED if entry.language in COMPILED else MAX_FAULT_TRIES
    for m in fault_candidates(root, entry.language, prebuilt)[:tries]:
        if len(tasks) > MAX_FAULTS:
            break
        tid = f"{base}-{m.name}-{len(tasks)}"
        frepo = out / "repos" / tid      # the task's snapshot: the clean release with the fault
        shutil.copytree(root, frepo, symlinks=True)
        line = apply_mutation(frepo, m)
        run_dir = frepo
        if prebuilt:   # run on a copy of the built tree: the setup then rebuilds only what the fault touches
            run_dir = work / f"{entry.name}.fault"
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.copytree(prebuilt, run_dir, symlinks=True)
            apply_mutation(run_dir, m)
        async with await open_sandbox(sandbox_cfg, str(run_dir), env=env) as sb:
            for c in entry.setup:
                await sb.run(c, timeout_s=300)
            r = await sb.run(entry.test_command, timeout_s=fault_timeout)
        if prebuilt:
            shutil.rmtree(run_dir, ignore_errors=True)
        results = _parse(entry.runner, r.output)
        newly = {t for t, s in results.items() if failed(s)} - baseline_fail
        if not results or not newly or r.timed_out:   # the fault is not caught by the tests: no task
            shutil.rmtree(frepo)
            continue
        name = Path(m.file).name
        cause = Fact("cause", f"cause: {m.cause} in {name}:{line}", [rf"{re.escape(name)}\W{{1,3}}(line\s+)?{line}\b"])
        tasks.append(_task(entry, tid, f"repos/{tid}", results, r.exit_code, cause))
    return Outcome(entry, tasks)


async def build_corpus(entries: list[Entry], out: Path, jobs: int = 2, sandbox_cfg=None,
                       progress=print) -> list[Outcome]:
    from tasks.corpus import write_corpus

    cfg = sandbox_config(sandbox_cfg)
    (out / "repos").mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    limit = asyncio.Semaphore(jobs)
    done = 0

    async def one(e: Entry) -> Outcome:
        nonlocal done
        async with limit:
            try:
                o = await build_project(e, out, work, cfg)
            except Exception as ex:   # noqa: BLE001 - a builder bug on one project must not lose the rest
                o = Outcome(e, [], f"build error: {type(ex).__name__}: {ex}")
        done += 1
        progress(f"[{done}/{len(entries)}] {e.key}: " + (f"{len(o.tasks)} tasks" if not o.excluded
                                                        else f"EXCLUDED ({o.excluded[:160]})"))
        return o

    outcomes = await asyncio.gather(*[one(e) for e in entries])
    shutil.rmtree(work, ignore_errors=True)
    tasks = [t for o in outcomes for t in o.tasks]
    write_corpus(out, tasks, source="manifest")
    import json
    summary = json.loads((out / "corpus.json").read_text())
    summary["excluded"] = {o.entry.key: o.excluded for o in outcomes if o.excluded}
    (out / "corpus.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return outcomes
