"""`terminus tasks build --manifest`: a corpus of real projects, one Ray task per project.

    entries --(Ray: build_project_cached, 1 CPU each by default)--> outcomes --> write_corpus

Locally (a private Ray started for the build) or on a cluster (`address`): every node must see the
output directory at the same path (a shared filesystem), as for checkpoints. Each project's result
is cached in OUT/.projects/<project>-<key>.json, written last, where the key hashes the manifest line,
the builder's code and the observation cap: a killed build resumes where it stopped, and a rebuild
of unchanged projects is free. A crashed worker excludes its project with the reason (the next
build retries it); nothing is dropped silently.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path

from tasks.manifest import Entry, stratified_splits
from tasks.store import write_corpus
from tasks.real import MISSING_PACKAGES, OBSERVATION_CAP, Outcome, build_project, sandbox_config
from tasks.runs import base_name, check_distinct, of_project

_BUILDER_SOURCES = ("real.py", "runs.py", "kinds.py", "manifest.py", "groundtruth.py", "builtin.py", "types.py", "build.py")


def project_key(entry: Entry, observation_cap: int) -> str:
    """What a project's cached result depends on: its manifest line, the builder's code, the cap."""
    h = hashlib.sha256(json.dumps(dataclasses.asdict(entry), sort_keys=True).encode())
    for name in _BUILDER_SOURCES:
        h.update((Path(__file__).parent / name).read_bytes())
    h.update(str(observation_cap).encode())
    return h.hexdigest()[:16]


def _clear_partial(entry: Entry, out: Path) -> None:
    """What a killed build of this project left behind (its task snapshots, its shared trees)."""
    base = base_name(entry)
    if (out / "repos").is_dir():
        for p in (out / "repos").iterdir():
            if of_project(p.name, base):
                shutil.rmtree(p, ignore_errors=True)
    shutil.rmtree(out / "shared" / base, ignore_errors=True)


def build_project_cached(entry: Entry, out: str, observation_cap: int = OBSERVATION_CAP, apt_install: bool = False) -> dict:
    """Build one project into `out` unless its cached result is there; returns Outcome.to_dict()
    (plus "cached"). Runs in a Ray task: synchronous, and it owns its work directory."""
    import asyncio

    out_dir = Path(out)
    key = project_key(entry, observation_cap)
    record = out_dir / ".projects" / f"{base_name(entry)}-{key}.json"
    if record.is_file():
        return json.loads(record.read_text()) | {"cached": True}
    _clear_partial(entry, out_dir)
    work = out_dir / ".work" / f"{base_name(entry)}-{key}"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    try:
        outcome = asyncio.run(build_project(entry, out_dir, work, sandbox_config(), observation_cap, apt_install))
    except Exception as e:   # noqa: BLE001 - a builder bug on one project must not lose the rest
        outcome = Outcome(entry, [], f"build error: {type(e).__name__}: {e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    outcome.duration_s = time.monotonic() - started
    result = outcome.to_dict()
    if not outcome.excluded.startswith(("build error", MISSING_PACKAGES)):   # retried by the next build: a builder
        # bug, or packages that may be installed by then
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(result))
        os.replace(tmp, record)
    return result | {"cached": False, "node": _node()}


def _node() -> str:
    """The Ray node this runs on ('' outside Ray): where each project was built, for the summary."""
    import ray
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _bar(done: int, total: int, started: float, width: int = 24) -> str:
    elapsed = time.monotonic() - started
    eta = elapsed / done * (total - done) if done else 0.0
    filled = int(width * done / max(1, total))
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} {elapsed / 60:.1f} min, eta {eta / 60:.1f} min"


def build_corpus(entries: list[Entry], out: Path, *, address: str = "", jobs: int = 2, cpus_per_project: float = 1,
                 observation_cap: int = OBSERVATION_CAP, apt_install: bool = False, progress=print) -> list[Outcome]:
    """Build every project of `entries` into the corpus `out`, one Ray task each, and write the corpus.

    `address`: a Ray cluster to run on ("" starts a private local Ray with `jobs` CPUs for the build).
    `observation_cap`: the output an episode shows per command (rollout.sandbox.output_limit_bytes of
    the runs that will train on the corpus): facts are kept only where that much output shows them.
    `apt_install`: install the Debian packages a project built by its Debian packaging needs (its
    Build-Depends; as root, on the node that builds it); without it such a project is excluded."""
    import ray

    from core.raycluster import init_ray

    check_distinct(entries)
    out = Path(out).resolve()
    (out / "repos").mkdir(parents=True, exist_ok=True)
    (out / "COMPLETE").unlink(missing_ok=True)   # a rebuild in place is partial until it is written again
    started_ray = init_ray(address, num_cpus=jobs, logging_level="ERROR", log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=cpus_per_project, max_retries=0)(build_project_cached)
        pending = {remote.remote(e, str(out), observation_cap, apt_install): e for e in entries}
        outcomes: list[Outcome] = []
        started = time.monotonic()
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            entry = pending.pop(ref)
            try:
                d = ray.get(ref)
                o = Outcome.from_dict(d)
                o.cached, o.node = d["cached"], d.get("node", "")
            except Exception as e:   # noqa: BLE001 - a worker that died: the project is excluded, retried next time
                o = Outcome(entry, [], f"build error: the worker died ({type(e).__name__}: {str(e)[:200]})")
            outcomes.append(o)
            where = "cached, " if o.cached else ""
            progress(f"{_bar(len(outcomes), len(entries), started)} {entry.key}: "
                     + (f"{where}{len(o.tasks)} tasks in {o.duration_s:.0f} s" if not o.excluded
                        else f"EXCLUDED ({o.excluded[:160]})"))
    finally:
        if started_ray:
            ray.shutdown()
    shutil.rmtree(out / ".work", ignore_errors=True)
    order = {e.key: i for i, e in enumerate(entries)}
    outcomes.sort(key=lambda o: order[o.entry.key])
    splits = stratified_splits([(o.entry.name, o.entry.language, {t.category for t in o.tasks}) for o in outcomes
                                if o.tasks])
    for o in outcomes:
        for t in o.tasks:
            t.split = splits[o.entry.name]
    write_corpus(out, [t for o in outcomes for t in o.tasks], source="manifest",
                 extra=build_summary(outcomes, observation_cap))
    return outcomes


def exclusion_kind(reason: str) -> str:
    """The class of an exclusion reason: fetch, cannot_run, flaky, build error."""
    return reason.split(":", 1)[0].strip()


def build_summary(outcomes: list[Outcome], observation_cap: int) -> dict:
    """What corpus.json adds for a manifest build: exclusions with reasons (and counted by kind),
    unobservable facts dropped (by kind), flaky faults, Python projects without install and run_script
    tasks because pip could not build their wheelhouse (with its reason), build times, and the
    observation cap the facts were checked against."""
    dropped: Counter = Counter()
    for o in outcomes:
        dropped.update(o.dropped)
    built = [o for o in outcomes if not o.excluded]
    times = sorted(o.duration_s for o in outcomes)
    return {"excluded": {o.entry.key: o.excluded for o in outcomes if o.excluded},
            "excluded_by_kind": dict(Counter(exclusion_kind(o.excluded) for o in outcomes if o.excluded)),
            "projects_by_language": dict(Counter(o.entry.language for o in built)),
            "manifest_projects_by_language": dict(Counter(o.entry.language for o in outcomes)),
            "unobservable_facts_dropped": dict(dropped),
            "flaky_faults_dropped": sum(o.flaky_faults for o in outcomes),
            "no_wheelhouse": {o.entry.key: o.no_wheelhouse for o in outcomes if o.no_wheelhouse},
            "build_seconds": {"total": round(sum(times), 1), "median": round(times[len(times) // 2], 1) if times else 0,
                              "max": round(times[-1], 1) if times else 0},
            "observation_cap": observation_cap}


def summary_table(summary: dict) -> str:
    """The build's totals as a plain table: per language, projects in the manifest, built, tasks."""
    tasks_by_language = summary.get("by_language", {})
    rows = [("language", "projects", "built", "tasks")]
    for lang in sorted(summary.get("manifest_projects_by_language", {})):
        rows.append((lang, summary["manifest_projects_by_language"][lang],
                     summary.get("projects_by_language", {}).get(lang, 0), tasks_by_language.get(lang, 0)))
    rows.append(("all", sum(r[1] for r in rows[1:]), sum(r[2] for r in rows[1:]), summary.get("tasks", 0)))
    width = [max(len(str(r[i])) for r in rows) for i in range(4)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, width)) for r in rows]
    lines.append("tasks by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(summary.get("by_category", {}).items())))
    lines.append("excluded by reason: " + (", ".join(f"{k} {n}" for k, n in sorted(
        summary.get("excluded_by_kind", {}).items())) or "none"))
    lines.append("unobservable facts dropped: " + (", ".join(f"{k} {n}" for k, n in sorted(
        summary.get("unobservable_facts_dropped", {}).items())) or "none")
                 + f"; flaky faults dropped: {summary.get('flaky_faults_dropped', 0)}"
                 + f"; no wheelhouse (no install, run_script): {len(summary.get('no_wheelhouse', {}))}")
    return "\n".join(lines)
