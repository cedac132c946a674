"""The distributed corpus build: one Ray task per project, spread over the nodes of a (local,
multi-node) cluster with the same result as a one-node build; a per-project cache makes a killed
build resume where it stopped and an unchanged rebuild free. Local fixture projects, no network."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from cluster.local import LocalCluster
from tasks.build import build_corpus
from tasks.manifest import Entry, stratified_splits

pytestmark = pytest.mark.timeout(600)


def _project(root, name: str, sleep_s: float = 0.0):
    """A small unittest project; its test sleeps `sleep_s` (a slow project, to kill a build in)."""
    root.mkdir(parents=True)
    (root / f"{name}.py").write_text("def bigger(a, b):\n    return a if a > b else b\n\n\n"
                                     "def is_empty(s):\n    return len(s) == 0\n")
    (root / f"test_{name}.py").write_text(
        f"import time\nimport unittest\nfrom {name} import bigger, is_empty\n\n\nclass T(unittest.TestCase):\n"
        f"    def test_bigger(self):\n        time.sleep({sleep_s})\n        self.assertEqual(bigger(2, 3), 3)\n"
        "    def test_empty(self):\n        self.assertTrue(is_empty(''))\n")
    return Entry(name, "local", "0", "python", "python3 -m unittest -v", path=str(root))


def _comparable(out):
    """The corpus's tasks without what differs between two runs of the same tests (their timings)."""
    tasks = {}
    for split in ("train", "validation", "test"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            d = json.loads(line)
            d["ground_truth"]["observed"].pop("outputs")
            tasks[d["id"]] = d
    return tasks


def test_build_spreads_projects_over_nodes_and_matches_a_one_node_build(tmp_path):
    entries = [_project(tmp_path / "src" / n, n) for n in ("alpha", "bravo", "carol", "delta")]
    one = tmp_path / "one"
    local = build_corpus(entries, one, jobs=2, progress=lambda s: None)
    assert not [o.excluded for o in local if o.excluded]
    with LocalCluster(nodes=[{}, {}], cpus_per_node=1) as c:
        lines = []
        spread = build_corpus(entries, tmp_path / "multi", address=c.address, progress=lines.append)
    assert not ray.is_initialized()   # the build's own connection is closed
    assert len({o.node for o in spread}) >= 2, [o.node for o in spread]   # projects ran on several nodes
    assert _comparable(tmp_path / "multi") == _comparable(one)
    assert len(lines) == 4 and lines[-1].startswith("[" + "#" * 24 + "] 4/4")
    summary = json.loads((tmp_path / "multi" / "corpus.json").read_text())
    assert summary["projects_by_language"] == {"python": 4} and summary["tasks"] == len(_comparable(one))


def test_a_killed_build_resumes_and_an_unchanged_rebuild_is_free(tmp_path):
    entries = [_project(tmp_path / "src" / "fast1", "fast1"), _project(tmp_path / "src" / "fast2", "fast2"),
               _project(tmp_path / "src" / "slow", "slow", sleep_s=3.0)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"name": e.name, "ecosystem": "local", "version": "0", "language": "python",
                                            "test_command": e.test_command, "path": e.path}) + "\n" for e in entries))
    out = tmp_path / "corpus"
    # the observation cap is the config's, like every other setting of a command
    cmd = [sys.executable, "-m", "terminus.cli", "tasks", "build", "--manifest", str(manifest), "--out", str(out),
           "--jobs", "1", "rollout.sandbox.output_limit_bytes=8192"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list((out / ".projects").glob("*.json"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)   # the build dies mid-way: some projects done, others not
    proc.wait()
    _reap_orphans_of(proc.pid)
    time.sleep(3)   # a worker of the dead build may still finish the project it was building
    finished = {p.name.rsplit("-", 1)[0] for p in (out / ".projects").glob("*.json")}
    assert finished and len(finished) < 3 and not (out / "COMPLETE").exists()

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "COMPLETE").exists() and "reusing the projects an earlier build finished" in r.stdout
    assert "observation cap 8192 bytes" in r.stdout
    assert json.loads((out / "corpus.json").read_text())["observation_cap"] == 8192
    for e in entries:
        line = next(ln for ln in r.stdout.splitlines() if f"{e.key}:" in ln)
        assert ("cached" in line) == (f"local-{e.name}" in finished), line
    built = _comparable(out)
    assert {t["project"] for t in built.values()} == {"fast1", "fast2", "slow"}
    assert all((out / t["repo_dir"]).is_dir() for t in built.values())

    t0 = time.monotonic()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and sum("cached" in ln for ln in again.stdout.splitlines() if "local:" in ln) == 3
    assert _comparable(out) == built and time.monotonic() - t0 < 60
    assert "language" in again.stdout and "tasks by kind: build 3" in again.stdout   # the summary table


def _reap_orphans_of(session: int) -> None:
    """Ray processes of the killed build's private Ray that outlive it (its client server): test hygiene."""
    import psutil
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if os.getsid(p.pid) == session:
                p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            pass


def test_splits_are_by_repository_and_stratified_by_language_and_kind():
    """Synthetic projects whose rare kinds all rank last by name hash: a split by language alone puts
    every lint project (all Python) and every build project (one per language) in train. Stratified
    by kind too, each held-out split gets one of each, train keeps some, the language quotas hold
    and no project is in two splits (a name listed under two languages included)."""
    from tasks.manifest import _rank

    sizes = {"python": 20, "javascript": 10, "c": 3}
    names = {lang: sorted((f"{lang}-p{i}" for i in range(n)), key=_rank) for lang, n in sizes.items()}
    projects = []
    for lang, ranked in names.items():
        for i, name in enumerate(ranked):
            kinds = {"run_tests"} | ({"lint"} if lang == "python" and i >= len(ranked) - 4 else set()) \
                | ({"build"} if i == len(ranked) - 1 else set())
            projects.append((name, lang, kinds))
    projects.append(("python-p0", "c", {"run_tests"}))   # one repository under two languages
    splits = stratified_splits(projects)
    assert set(splits) == {n for n, _, _ in projects}   # one split per repository
    for kind in ("run_tests", "lint", "build"):
        where = [splits[n] for n, _, ks in projects if kind in ks]
        assert {"train", "validation", "test"} <= set(where), (kind, where)
    for lang, ranked in names.items():
        mine = [splits[n] for n in ranked]
        quota = max(1, round(0.1 * len(ranked)))
        assert mine.count("validation") >= quota and mine.count("test") >= quota, (lang, mine)
    assert stratified_splits(list(reversed(projects))) == splits   # not the build order
    assert set(stratified_splits(projects[:2]).values()) == {"train"}   # too few to hold any out


def test_task_ids_of_one_project_never_name_another(tmp_path):
    """A project named `x-build` next to `x`: x's build task is `local-x~build` (no project name holds
    '~'), so clearing what a killed build of x left removes x's snapshots only, never x-build's
    (whose clean task was `local-x-build`, x's build task's id before). Base names that coincide are
    refused with the names."""
    from core.errors import UserError
    from tasks.build import _clear_partial
    from tasks.runs import check_distinct, task_id

    x, xb = (Entry(n, "local", "0", "python", "true") for n in ("x", "x-build"))
    ids = {task_id("local-x"), task_id("local-x", "build"), task_id("local-x", "flip_eq", 1),
           task_id("local-x-build"), task_id("local-x-build", "lint"), task_id("local-x-build", "one", 2)}
    assert len(ids) == 6 and "local-x~build" in ids
    for i in ids:
        (tmp_path / "repos" / i).mkdir(parents=True)
    _clear_partial(x, tmp_path)
    assert sorted(p.name for p in (tmp_path / "repos").iterdir()) == ["local-x-build", "local-x-build~lint",
                                                                      "local-x-build~one~2"]
    check_distinct([x, xb])
    with pytest.raises(UserError, match=r"local:a/b==0 and local:a_b==0 would share task ids"):
        check_distinct([Entry("a/b", "local", "0", "c", "true"), Entry("a_b", "local", "0", "c", "true")])
