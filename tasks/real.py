"""Tasks from real open-source projects listed in a manifest (tasks/manifests/*.jsonl).

For each entry: fetch the source through its package registry (PyPI sdist with `pip download
--no-binary :all:`, npm tarball with `npm pack`), check in a sandbox that its tests run and are not
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
from dataclasses import dataclass
from pathlib import Path

from tasks.builtin import Mutation, apply_mutation, check_reference, reference_report
from tasks.manifest import Entry, _parse, check_project, split_of
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task

# (operator name, old, new, cause): applied to the first matching source line of a file
OPERATORS = (("flip_eq", " == ", " != ", "an equality test is negated"),
             ("offbyone", " + 1", " + 2", "an off-by-one change (+ 1 became + 2)"),
             ("flip_lt", " < ", " >= ", "a comparison is flipped (< became >=)"),
             ("flip_bool", "return True", "return False", "a function returns False instead of True"))
SOURCE_EXT = {"python": ".py", "javascript": ".js"}
MAX_FAULTS = 6
REQUESTS = ("Run the test suite of {name} (`{cmd}`) and tell me what fails, if anything.",
            "Can you run `{cmd}` in this repo and report which tests fail and why?",
            "I changed some code in {name}. Run the tests (`{cmd}`) and summarize the results.",
            "Check whether the {name} tests pass: `{cmd}`. If not, which ones fail and what is the likely cause?",
            "Please run `{cmd}` and give me the pass/fail counts and any failing test names.")


def sandbox_env() -> dict:
    """Python projects run with this venv's interpreter and pytest (bound read-only)."""
    return {"PATH": f"{sys.prefix}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"}


def sandbox_config(base=None):
    from rollout.config import SandboxConfig
    cfg = base or SandboxConfig()
    cfg.ro_binds = list(dict.fromkeys([*cfg.ro_binds, sys.prefix, sys.base_prefix]))
    return cfg


def fetch(entry: Entry, dest: Path) -> Path:
    """Download and unpack the project's source; returns its root directory."""
    dest.mkdir(parents=True, exist_ok=True)
    if entry.ecosystem == "local":
        shutil.copytree(entry.path, dest / "src" / entry.name, symlinks=True)
        return dest / "src" / entry.name
    if entry.ecosystem == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", f"{entry.name}=={entry.version}", "-d", str(dest)]
    elif entry.ecosystem == "npm":
        cmd = ["npm", "pack", "--silent", f"{entry.name}@{entry.version}", "--pack-destination", str(dest)]
    else:
        raise RuntimeError(f"ecosystem {entry.ecosystem} cannot be fetched by this builder")
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


def fault_candidates(root: Path, language: str) -> list[Mutation]:
    """Mutations of real source lines (not tests), each a unique line so it applies exactly once."""
    out = []
    ext = SOURCE_EXT.get(language, "")
    files = sorted(p for p in root.rglob(f"*{ext}") if ext and "test" not in str(p.relative_to(root)).lower()
                   and "setup" not in p.name and "node_modules" not in p.parts)
    for path in files:
        text = path.read_text(errors="replace")
        for name, old, new, cause in OPERATORS:
            for line in text.splitlines():
                if old in line and text.count(line) == 1 and not line.strip().startswith(("#", "//")):
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
    chk = await check_project(str(root), entry, sandbox_cfg, env=env)
    if chk.verdict != "runs":
        return Outcome(entry, [], f"{chk.verdict}: {chk.reason}")
    base = f"{entry.ecosystem}-{entry.name}".replace("/", "_").replace("@", "")
    tasks: list[Task] = []
    repo = out / "repos" / base
    shutil.copytree(root, repo, symlinks=True)
    tasks.append(_task(entry, base, f"repos/{base}", chk.results[0], chk.exit_codes[0], None))
    baseline_fail = {t for t, s in chk.results[0].items() if failed(s)}
    from rollout.sandbox import open_sandbox
    for m in fault_candidates(root, entry.language):
        if len(tasks) > MAX_FAULTS:
            break
        tid = f"{base}-{m.name}-{len(tasks)}"
        frepo = out / "repos" / tid
        shutil.copytree(root, frepo, symlinks=True)
        line = apply_mutation(frepo, m)
        async with await open_sandbox(sandbox_cfg, str(frepo), env=env) as sb:
            for c in entry.setup:
                await sb.run(c, timeout_s=300)
            r = await sb.run(entry.test_command, timeout_s=300)
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
