"""The task record: what a main agent delegates, plus what only the grader may see."""
from __future__ import annotations

import json
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
    """
    kind: str
    value: str
    patterns: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Task":
        gt = d.get("ground_truth") or {}
        ref = d.get("reference")
        return Task(
            **{k: v for k, v in d.items() if k not in ("ground_truth", "reference")},
            ground_truth=GroundTruth(exit_status=gt.get("exit_status"),
                                     facts=[Fact(**f) for f in gt.get("facts", [])],
                                     observed=gt.get("observed", {})),
            reference=ReferenceSolution(**ref) if ref else None,
        )

    def public_view(self) -> dict[str, Any]:
        """What the policy may see: never the ground truth or the reference solution."""
        return {"id": self.id, "language": self.language, "category": self.category, "request": self.request}
