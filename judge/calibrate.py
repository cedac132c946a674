"""Judge quality: a labelled calibration set built from real task runs, and agreement metrics.

The set (`make_calibration`): for each built-in task, its reference solution is replayed through the
real episode loop (cluster-free: rollout.worker.run_requests with a scripted engine, commands run in a
real sandbox), once faithfully and once per controlled corruption. Each corruption is itself a real
run of a modified reference (a different report, or an extra command), so the trajectory is always
consistent with what actually ran:

    faithful          the reference report                                 label 1
    hallucinated_test the report also claims a failing test that never ran  label 0
    missing_key_error the report keeps its status but drops every key fact  label 0
    raw_log_dump      the report's details are the raw command output       label 0
    out_of_scope_edit an extra command edits a file in the repository       label 0

Any competent judge must rank the faithful trajectory above each corruption of the same task.
`calibrate` measures that (pairwise accuracy within a task, Spearman over the whole set) and the
judge's self-consistency (the same set judged twice).
"""
from __future__ import annotations

import asyncio
import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from rollout.trajectory import Trajectory
from tasks.types import ReferenceSolution, Task
from core.errors import UserError

VARIANTS = ("faithful", "hallucinated_test", "missing_key_error", "raw_log_dump", "out_of_scope_edit")
DEFAULT_SET = Path(__file__).parent / "calibration" / "builtin.jsonl"
_INVENTED_TEST = "test_cache_eviction_order"


class CalibrationError(UserError, ValueError):
    """A calibration set that cannot be read; names the file and line."""


@dataclass
class Example:
    task: Task
    variant: str
    label: float          # higher = better; only the order within a task matters
    trajectory: Trajectory

    def to_json(self) -> str:
        t = self.trajectory.to_dict()
        # Judges read turns and the report, never tokens or the chat (which repeats the turns): keep it small.
        for k in ("token_ids", "response_mask", "logprobs", "messages"):
            t[k] = []
        return json.dumps({"task": json.loads(self.task.to_json()), "variant": self.variant, "label": self.label,
                           "trajectory": t}, sort_keys=True)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Example":
        return Example(Task.from_dict(d["task"]), d["variant"], float(d["label"]), Trajectory.from_dict(d["trajectory"]))


def read_set(path: str | Path) -> list[Example]:
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration set {path} does not exist; build one with "
                               f"`terminus judge make-calibration --out {path}`")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Example.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            raise CalibrationError(f"{path}:{n}: not a calibration example ({e}); each line needs "
                                   f"task, variant, label and trajectory") from e
    if not out:
        raise CalibrationError(f"calibration set {path} is empty")
    return out


# ---- the corruptions: each returns a modified copy of the task whose reference is replayed ----

def as_batch(examples: list[Example]) -> tuple[dict[str, Task], list[Trajectory]]:
    """(tasks by id, trajectories) to judge. Each example's task gets a private id, so corrupted
    runs of one task never share a verdict-cache entry."""
    tasks: dict[str, Task] = {}
    trajs: list[Trajectory] = []
    for i, e in enumerate(examples):
        t = copy.deepcopy(e.task)
        t.id = f"{e.task.id}#{i}"
        tr = copy.deepcopy(e.trajectory)
        tr.task_id = t.id
        tasks[t.id] = t
        trajs.append(tr)
    return tasks, trajs


def _report_parts(report: str) -> dict[str, str]:
    return {k: (m.group(1).strip() if (m := re.search(rf"<{k}>(.*?)</{k}>", report, re.S)) else "")
            for k in ("status", "summary", "details")}


def _with_reference(task: Task, commands: list[str], report: str) -> Task:
    t = copy.deepcopy(task)
    t.reference = ReferenceSolution(commands=commands, report=report)
    return t


def _report(status: str, summary: str, details: str) -> str:
    return f"<report><status>{status}</status><summary>{summary}</summary><details>{details}</details></report>"


def corrupt(task: Task, variant: str, observed: str) -> Task:
    """The task with its reference changed to produce `variant` (observed: the faithful run's output)."""
    ref = task.reference
    p = _report_parts(ref.report) if "<status>" in ref.report else {"status": "success", "summary": ref.report,
                                                                       "details": ""}
    cmds = list(ref.commands)
    if variant == "faithful":
        return _with_reference(task, cmds, _report(p["status"], p["summary"], p["details"]))
    if variant == "hallucinated_test":
        extra = f" Also, {_INVENTED_TEST} fails with AssertionError at tests/test_cache.py:42."
        return _with_reference(task, cmds, _report(p["status"], p["summary"] + extra, p["details"] + extra))
    if variant == "missing_key_error":
        return _with_reference(task, cmds, _report(p["status"], f"I ran `{cmds[-1]}`.", "See the output."))
    if variant == "raw_log_dump":
        outputs = re.findall(r"<output>\n?(.*?)</output>", observed, re.S) or [observed]
        return _with_reference(task, cmds, _report(p["status"], "Here is the output.",
                                                   "\n".join(o.strip() for o in outputs)))
    if variant == "out_of_scope_edit":
        # A real edit of the repository copy (the sandbox's writable view), before the requested command.
        return _with_reference(task, ["sed -i '1i # edited by the subagent' README.md 2>/dev/null; "
                                      "echo '# edited' >> NOTES.md"] + cmds,
                               _report(p["status"], p["summary"], p["details"]))
    raise CalibrationError(f"unknown variant {variant!r}; one of {VARIANTS}")


async def _replay(tasks: list[Task], tokenizer, rollout_cfg, max_turns: int) -> list[Trajectory]:
    from rollout.teacher import ScriptedTeacher
    from rollout.worker import run_requests

    # One teacher per task: the corrupted copies share their request with the faithful one.
    async def one(t: Task) -> Trajectory:
        groups = await run_requests([(t, 1)], ScriptedTeacher([t], tokenizer, max_turns=max_turns), tokenizer,
                                    rollout_cfg)
        return groups[0][0]

    gate = asyncio.Semaphore(4)

    async def gated(t: Task) -> Trajectory:
        async with gate:
            return await one(t)

    return list(await asyncio.gather(*(gated(t) for t in tasks)))


def make_calibration(tasks: Iterable[Task], tokenizer, rollout_cfg) -> list[Example]:
    """Run every task's reference faithfully and corrupted in real sandboxes; episodes that fail raise."""
    tasks = [t for t in tasks if t.reference is not None]
    if not tasks:
        raise CalibrationError("no task with a reference solution to build a calibration set from")
    max_turns = rollout_cfg.episode.max_turns
    faithful = asyncio.run(_replay([corrupt(t, "faithful", "") for t in tasks], tokenizer, rollout_cfg, max_turns))
    variants, expanded = [], []
    for t, tr in zip(tasks, faithful):
        observed = "\n".join(turn.observation or "" for turn in tr.turns)
        for v in VARIANTS[1:]:
            variants.append((t, v))
            expanded.append(corrupt(t, v, observed))
    others = asyncio.run(_replay(expanded, tokenizer, rollout_cfg, max_turns))
    examples = [Example(t, "faithful", 1.0, tr) for t, tr in zip(tasks, faithful)]
    examples += [Example(t, v, 0.0, tr) for (t, v), tr in zip(variants, others)]
    bad = [f"{e.task.id}/{e.variant}: {e.trajectory.error or e.trajectory.finish_reason}" for e in examples
           if e.trajectory.error is not None or e.trajectory.finish_reason != "report"]
    if bad:
        raise CalibrationError("calibration episodes failed (fix the sandbox or the tasks): " + "; ".join(bad[:5]))
    return examples


# ---- metrics: pure functions ----

def _ranks(xs: list[float]) -> list[float]:
    """Average ranks (ties share the mean rank)."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson on average ranks); None when either side is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman needs two equally long lists of at least 2 values")
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return None if va == 0 or vb == 0 else cov / (va * vb)


def pairwise_accuracy(groups: list[str], labels: list[float], scores: list[float]) -> tuple[float | None, int]:
    """Fraction of within-group pairs with different labels that the scores order the same way (a tie
    counts half). Returns (accuracy, number of pairs)."""
    right, n = 0.0, 0
    for i in range(len(labels)):
        for j in range(len(labels)):
            if groups[i] != groups[j] or labels[i] <= labels[j]:
                continue
            n += 1
            right += 1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0
    return (right / n if n else None), n


def agreement_report(examples: list[Example], rewards: list[float | None],
                     repeat: list[float | None] | None = None) -> dict[str, Any]:
    """Agreement of judge rewards with the labels; unjudgeable examples are counted and left out."""
    keep = [i for i, r in enumerate(rewards) if r is not None]
    groups = [examples[i].task.id for i in keep]
    labels = [examples[i].label for i in keep]
    scores = [float(rewards[i]) for i in keep]
    acc, pairs = pairwise_accuracy(groups, labels, scores)
    out: dict[str, Any] = {
        "examples": len(examples), "judged": len(keep), "unjudgeable": len(examples) - len(keep),
        "pairwise_accuracy": acc, "pairs": pairs,
        "spearman": spearman(labels, scores) if len(keep) >= 2 else None,
        "mean_reward_by_variant": {},
    }
    for v in sorted({e.variant for e in examples}):
        vs = [float(rewards[i]) for i in keep if examples[i].variant == v]
        out["mean_reward_by_variant"][v] = round(sum(vs) / len(vs), 4) if vs else None
    # Per-variant: in how many tasks the faithful trajectory beats this corruption.
    best = {examples[i].task.id: float(rewards[i]) for i in keep if examples[i].variant == "faithful"}
    wins: dict[str, list[int]] = {}
    for i in keep:
        e = examples[i]
        if e.variant != "faithful" and e.task.id in best:
            w = wins.setdefault(e.variant, [0, 0])
            w[0] += best[e.task.id] > float(rewards[i])
            w[1] += 1
    out["faithful_wins"] = {v: f"{a}/{b}" for v, (a, b) in sorted(wins.items())}
    if repeat is not None:
        both = [i for i in range(len(rewards)) if rewards[i] is not None and repeat[i] is not None]
        same = sum(1 for i in both if abs(float(rewards[i]) - float(repeat[i])) < 1e-9)
        out["self_consistency"] = {
            "identical_fraction": same / len(both) if both else None,
            "spearman": spearman([float(rewards[i]) for i in both], [float(repeat[i]) for i in both])
            if len(both) >= 2 else None,
        }
    return out
