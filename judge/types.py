"""The verdict: what a judge says about one trajectory, and the backend Protocol every judge speaks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rollout.trajectory import Trajectory
from tasks.types import Task


@dataclass
class DimensionScore:
    score: float            # 0..rubric.MAX_SCORE
    rationale: str = ""


@dataclass
class FailureFlag:
    flag: bool
    evidence: str = ""


@dataclass
class ItemCheck:
    """A task-specific rubric item from the ground truth; `code` is the programmatic check (None when the
    item has no pattern), `llm` the LLM judge's answer (None for the rules judge)."""
    id: str
    text: str
    code: bool | None = None
    llm: bool | None = None


@dataclass
class Verdict:
    judge: str                                  # e.g. "rules", "openai:gpt-x", "vllm:/path"
    status: str = "ok"                          # "ok" | "unjudgeable"
    reason: str = ""                            # why unjudgeable (e.g. "episode_error", "malformed_json")
    dimensions: dict[str, DimensionScore] = field(default_factory=dict)
    failures: dict[str, FailureFlag] = field(default_factory=dict)
    items: list[ItemCheck] = field(default_factory=list)
    reward: float | None = None                 # None when unjudgeable: never a silent 0
    samples: int = 1                            # k-sample voting: how many verdicts were aggregated
    agreement: float | None = None              # fraction of sample fields agreeing with the aggregate
    latency_s: float = 0.0
    cached: bool = False
    invalid_replies: int = 0                    # LLM replies that failed the verdict schema (each was retried)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Verdict":
        d = dict(d)
        d["dimensions"] = {k: DimensionScore(**v) for k, v in d.get("dimensions", {}).items()}
        d["failures"] = {k: FailureFlag(**v) for k, v in d.get("failures", {}).items()}
        d["items"] = [ItemCheck(**i) for i in d.get("items", [])]
        return Verdict(**d)

    @staticmethod
    def unjudgeable(judge: str, reason: str) -> "Verdict":
        return Verdict(judge=judge, status="unjudgeable", reason=reason)


class Judge(Protocol):
    """A judge backend. `judge` returns a Verdict with dimensions and failures filled (reward may be left
    None: the pool computes it from the config's weights); it raises only for transient errors worth a retry
    and returns `Verdict.unjudgeable` for everything else."""
    name: str

    async def judge(self, task: Task, trajectory: Trajectory) -> Verdict: ...

    async def close(self) -> None: ...
