"""The trajectory record: one episode, token-exact, with everything needed to judge and train on it."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Turn:
    """One assistant turn and what came back."""
    text: str                          # the generated text (decoded from the generated ids)
    action: str                        # "command" | "report" | "format_error"
    command: str | None = None
    observation: str | None = None     # the observation message sent back (None after a report)
    exit_code: int | None = None
    timed_out: bool = False
    truncated: bool = False            # the command's output was cut (the observation, not the turn)
    cut_off: bool = False              # the generation hit its token budget (engine finish reason "length")
    format_error: str | None = None    # why the turn was malformed
    gen_time_s: float = 0.0
    exec_time_s: float = 0.0
    num_generated_tokens: int = 0

    @property
    def rejected(self) -> bool:
        """The protocol rejected the turn (malformed): the episode told the model why and went on."""
        return self.action == "format_error"


@dataclass
class Trajectory:
    task_id: str
    messages: list[dict[str, str]]     # the chat, for judges and humans
    token_ids: list[int]               # the full sequence: prompt + generations + observations
    response_mask: list[int]           # 1 on model-generated tokens, 0 elsewhere
    logprobs: list[float]              # rollout logprob per token (0.0 where mask == 0)
    prompt_len: int = 0                # tokens of the initial prompt (system + request)
    turns: list[Turn] = field(default_factory=list)
    report: dict[str, Any] | None = None   # the parsed <report> (None: no report)
    finish_reason: str = ""            # "report" | "max_turns" | "context_limit" | "timeout" | "error"
    error: str | None = None           # set when the episode failed (sandbox/engine error); never dropped
    group_id: str = ""                 # rollouts of the same task in one step share a group
    policy_version: int = 0            # weight version that generated it (async staleness)
    reward: float | None = None        # filled by the judge; None = not judged
    verdict: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Usable for training: no episode error and judged."""
        return self.error is None and self.reward is not None

    @property
    def format_errors(self) -> int:
        """How many of its turns the protocol rejected."""
        return sum(t.rejected for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Trajectory":
        d = dict(d)
        d["turns"] = [Turn(**t) for t in d.get("turns", [])]
        return Trajectory(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
