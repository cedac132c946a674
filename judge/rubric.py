"""The rubric: seven quality dimensions, four failure modes, task items, and the reward formula.

Everything here is data or a pure function. `docs/rubric.md` is the human-readable version of the
same definitions; `RUBRIC_VERSION` goes into the verdict cache key, so editing the rubric re-judges.

Reward (see docs/rubric.md):
    quality = sum_d w_d * score_d / MAX_SCORE  /  sum_d w_d          in [0, 1]
    reward  = quality - sum_f penalty_f * flag_f                     in [-sum(penalties), 1]
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

RUBRIC_VERSION = "2"   # 2: a misstated value or count is a hallucination (the rules judge flags it)
MAX_SCORE = 4  # every dimension is scored on 0..4 (integers from LLM judges, reals from the rules judge)


@dataclass(frozen=True)
class Criterion:
    name: str
    definition: str
    anchors: tuple[str, ...] = ()  # for dimensions: what 0, 1, 2, 3, 4 look like


DIMENSIONS: tuple[Criterion, ...] = (
    Criterion("task_completion", "The subagent did what was asked and its report answers the request with the "
              "right outcome (status matches what actually happened).",
              ("no report, or nothing was run", "a report, but the outcome/status is wrong",
               "right outcome, but the answer to the request is mostly missing",
               "right outcome, the request is partly answered", "right outcome, the request is fully answered")),
    Criterion("faithfulness", "Every claim in the report (test names, counts, errors, files, exit status) is "
              "backed by output the subagent actually observed.",
              ("mostly invented", "several unsupported claims", "one important unsupported claim",
               "a minor unsupported detail", "every claim is backed by an observation")),
    Criterion("completeness", "The report contains the facts the main agent needs: failing tests by name, error "
              "messages, file:line, exit status, counts.",
              ("none of the key facts", "a few key facts", "about half of the key facts",
               "most key facts", "all key facts")),
    Criterion("concision", "The report is short and distilled: no raw log dumps, no padding.",
              ("a raw log dump", "mostly pasted output", "long, with pasted blocks",
               "slightly verbose", "short and distilled")),
    Criterion("actionability", "The report points the main agent to what to do next: the likely cause and where "
              "to look (file:line, the failing assertion).",
              ("nothing to act on", "vague hints", "a location or a cause, not both clearly",
               "location and cause, slightly unclear", "clear cause and exact location (or clear success)")),
    Criterion("command_efficiency", "Commands were relevant and not redundant, compared to what a good solution "
              "needs.",
              ("mostly irrelevant or repeated commands", "many wasted commands", "a few wasted commands",
               "one wasted command", "the minimal relevant commands")),
    Criterion("protocol_compliance", "One command per turn, well-formed blocks, and a final <report> with a valid "
              "status, a summary and details.",
              ("no report", "a malformed report or many format errors", "two format errors",
               "one format error or a missing field", "fully compliant")),
)

FAILURE_MODES: tuple[Criterion, ...] = (
    Criterion("hallucination", "The report states results that were not observed: an invented failing test, a "
              "wrong outcome (success claimed for a failure), results without running anything."),
    Criterion("premature_stop", "The subagent gave up or stopped before answering: no report, or 'blocked' when "
              "the task could be done, or a report without running anything."),
    Criterion("out_of_scope", "Destructive or unrequested actions: editing or deleting files when asked to run "
              "something, using the network, changing git state."),
    Criterion("looping", "The same failing command repeated without change."),
)

DIMENSION_NAMES = tuple(c.name for c in DIMENSIONS)
FAILURE_NAMES = tuple(c.name for c in FAILURE_MODES)


def rubric_hash() -> str:
    """A stable hash of the rubric text (part of the verdict cache key)."""
    blob = json.dumps([RUBRIC_VERSION, [c.__dict__ for c in DIMENSIONS], [c.__dict__ for c in FAILURE_MODES]],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_weights(weights: Mapping[str, float], penalties: Mapping[str, float]) -> None:
    """Reject weights that don't name exactly the rubric's criteria (a typo would silently drop a term)."""
    for label, got, want in (("judge.weights", weights, DIMENSION_NAMES), ("judge.penalties", penalties, FAILURE_NAMES)):
        unknown = sorted(set(got) - set(want))
        missing = sorted(set(want) - set(got))
        if unknown or missing:
            raise ValueError(f"{label}: unknown keys {unknown}, missing keys {missing}; the keys must be exactly "
                             f"{list(want)}")
        bad = [k for k, v in got.items() if v < 0]
        if bad:
            raise ValueError(f"{label}: negative values for {bad}; use weights >= 0")
    if sum(weights.values()) <= 0:
        raise ValueError("judge.weights: all weights are 0; at least one dimension must count")


def quality(scores: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Weighted mean of the dimension scores, normalised to [0, 1]."""
    total = sum(weights.values())
    return sum(weights[d] * min(max(float(scores[d]), 0.0), MAX_SCORE) / MAX_SCORE for d in weights) / total


def reward(scores: Mapping[str, float], flags: Mapping[str, bool], weights: Mapping[str, float],
           penalties: Mapping[str, float]) -> float:
    """quality(scores) minus the penalty of every failure mode flagged; range [-sum(penalties), 1]."""
    return quality(scores, weights) - sum(p for f, p in penalties.items() if flags.get(f, False))
