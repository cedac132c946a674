"""The task record: what a main agent delegates, plus what only the grader may see."""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

CATEGORIES = ("run_tests", "build", "run_script", "install", "lint", "diagnose")


@dataclass
class Fact:
    """One ground-truth fact a good report must contain, checkable by code where `pattern` is set.

    kind: e.g. "exit_status", "failing_test", "passing_count", "error_location", "error_message", "cause".
    value: the fact in words ("test_parse fails with AssertionError").
    patterns: regexes that a report mentioning the fact matches (all must match, case-insensitive).
    evidence: exact strings of what the agent sees (the reference commands' observations) that back the
        fact; a corpus that records them can check that the fact is observable (tasks/generated.py).
    contradictions: regexes that a report stating the fact wrongly matches (the same key with another
        value, other counts): a claim the output does not back.
    """
    kind: str
    value: str
    patterns: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)

    def stated_in(self, text: str) -> bool | None:
        """Whether a report's text states the fact (every pattern matches); None: no pattern to check it."""
        return all(re.search(p, text, re.IGNORECASE | re.MULTILINE) for p in self.patterns) if self.patterns else None

    def misstatements_in(self, text: str) -> list[str]:
        """The report's words that state the fact wrongly (a contradiction's matches)."""
        return [m.group(0) for c in self.contradictions for m in re.finditer(c, text, re.IGNORECASE | re.MULTILINE)]


@dataclass
class GroundTruth:
    exit_status: int | None = None
    facts: list[Fact] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)  # raw machine-readable results (e.g. parsed JUnit)


@dataclass
class ReferenceSolution:
    commands: list[str]
    report: str  # the ideal <report> body


@dataclass
class TaskEnvironment:
    """What a task's commands need around the repository, recorded by the build that ran them and
    given to every episode of the task, so an episode sees exactly what the ground truth was made in.

    ro_binds: host paths made visible read-only: "HOST" (at the same path) or "HOST:DEST" (DEST
        relative to the sandbox's workdir, or absolute). A relative HOST lives in the corpus
        directory (e.g. a project's node_modules, shared by all its tasks) and is resolved on load.
    env: environment variables (e.g. a PATH that puts the project's virtual environment first).
    debian_packages: the host's Debian packages the commands need, as a dependency string (a project
        built by its Debian packaging: its Build-Depends); every sandbox checks them (the host's /usr
        is what the sandbox sees), so a corpus moved to a machine without them says what to install.
    """
    ro_binds: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    debian_packages: str = ""

    def resolved(self, corpus_dir: str) -> "TaskEnvironment":
        """This environment with relative host paths made absolute under corpus_dir."""
        def one(bind: str) -> str:
            host, sep, dest = bind.partition(":")
            return os.path.join(corpus_dir, host) + sep + dest if not os.path.isabs(host) else bind
        return TaskEnvironment([one(b) for b in self.ro_binds], dict(self.env), self.debian_packages)

    async def open_sandbox(self, sandbox_cfg, repo_dir: str | None, *, image: str = "", env: dict | None = None):
        """A sandbox (sandbox.open_sandbox) of `repo_dir` with this environment: its binds and its
        variables, plus `env`. The one place that turns a task's environment into a sandbox: the
        build's runs and every episode open theirs here."""
        from sandbox import open_sandbox
        # the sandboxes that see the host's /usr (an image must carry the packages itself: docs/sandbox.md)
        host_usr = getattr(sandbox_cfg, "backend", "bwrap") in ("bwrap", "local")
        if self.debian_packages and host_usr and (unmet := _unmet_debian_packages(self.debian_packages)):
            from core.errors import UserError
            raise UserError(f"this task's commands need Debian packages this machine lacks: {unmet}; install them "
                            f"as root with: apt-get satisfy '{unmet}'")
        return await open_sandbox(sandbox_cfg, repo_dir, image=image, env={**self.env, **(env or {})},
                                  ro_binds=self.ro_binds)


def unmet_debian_packages(depends: str) -> str:
    """The part of a Debian dependency string that this machine's installed packages do not satisfy,
    as dpkg-checkbuilddeps says it ('' when all are)."""
    if not depends:
        return ""
    if not shutil.which("dpkg-checkbuilddeps"):
        return f"{depends} (cannot check: dpkg-checkbuilddeps is missing; it is Debian's dpkg-dev)"
    r = subprocess.run(["dpkg-checkbuilddeps", "-d", depends, "/dev/null"], capture_output=True, text=True)
    if r.returncode == 0:
        return ""
    m = re.search(r"Unmet build dependencies: (.+)", r.stderr)
    return m.group(1).strip() if m else f"({r.stderr.strip()[-200:]})"


# an episode checks once per process and dependency string (an install in between is not seen: restart)
_unmet_debian_packages = functools.lru_cache(maxsize=64)(unmet_debian_packages)


@dataclass
class Task:
    id: str
    language: str
    category: str
    project: str                 # source project name; splits are made by project
    repo_dir: str                # path of the repository snapshot (read-only template)
    request: str                 # the main agent's words
    setup: list[str] = field(default_factory=list)  # run before the episode, outside the budget
    ground_truth: GroundTruth = field(default_factory=GroundTruth)
    reference: ReferenceSolution | None = None
    split: str = "train"
    image: str = ""              # docker/podman image, when the task needs one
    environment: TaskEnvironment = field(default_factory=TaskEnvironment)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Task":
        gt = d.get("ground_truth") or {}
        ref = d.get("reference")
        return Task(
            **{k: v for k, v in d.items() if k not in ("ground_truth", "reference", "environment")},
            environment=TaskEnvironment(**(d.get("environment") or {})),
            ground_truth=GroundTruth(exit_status=gt.get("exit_status"),
                                     facts=[Fact(**f) for f in gt.get("facts", [])],
                                     observed=gt.get("observed", {})),
            reference=ReferenceSolution(**ref) if ref else None,
        )

    def public_view(self) -> dict[str, Any]:
        """What the policy may see: never the ground truth or the reference solution."""
        return {"id": self.id, "language": self.language, "category": self.category, "request": self.request}
