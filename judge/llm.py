"""LLM judging: the judge prompt, the verdict JSON schema, the strict parser, k-sample aggregation,
and the OpenAI-compatible backend (the vLLM backend in judge/vllm_judge.py reuses all but the client)."""
from __future__ import annotations

import json
import statistics
from typing import Any

from judge.rubric import DIMENSIONS, FAILURE_MODES, MAX_SCORE
from judge.rules import report_text, task_items
from judge.types import DimensionScore, FailureFlag, ItemCheck, Verdict
from rollout.trajectory import Trajectory
from tasks.types import Task

RATIONALE_MAX = 160        # bounded strings keep guided decoding short on a random model
OBSERVATION_MAX = 2000     # characters of each observation shown to the judge (head + tail)


class VerdictParseError(ValueError):
    pass


def verdict_schema(n_items: int, text_max: int = RATIONALE_MAX) -> dict[str, Any]:
    """The JSON schema of an LLM verdict (used for guided decoding and for strict parsing).
    `text_max` bounds each rationale/evidence string, hence the verdict's length in tokens."""
    # The length bound lives in the pattern: xgrammar (vLLM's guided decoding) does not support a
    # pattern together with maxLength, and without a bound a random model writes until max_tokens.
    text = {"type": "string", "pattern": f"^[^\\x00-\\x1f\"\\\\]{{0,{text_max}}}$"}
    dim = {"type": "object", "properties": {"score": {"type": "integer", "minimum": 0, "maximum": MAX_SCORE},
                                            "rationale": text},
           "required": ["score", "rationale"], "additionalProperties": False}
    fail = {"type": "object", "properties": {"flag": {"type": "boolean"}, "evidence": text},
            "required": ["flag", "evidence"], "additionalProperties": False}
    return {
        "type": "object",
        "properties": {
            "dimensions": {"type": "object", "properties": {c.name: dim for c in DIMENSIONS},
                           "required": [c.name for c in DIMENSIONS], "additionalProperties": False},
            "failure_modes": {"type": "object", "properties": {c.name: fail for c in FAILURE_MODES},
                              "required": [c.name for c in FAILURE_MODES], "additionalProperties": False},
            "items": {"type": "array", "items": {"type": "boolean"}, "minItems": n_items, "maxItems": n_items},
        },
        "required": ["dimensions", "failure_modes", "items"], "additionalProperties": False,
    }


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else f"{s[:n // 2]}\n...[{len(s) - n} characters cut]...\n{s[-n // 2:]}"


def render_prompt(task: Task, traj: Trajectory) -> list[dict[str, str]]:
    """The judge's chat: rubric and ground truth (never shown to the policy), the trajectory, the report."""
    rubric = ["Quality dimensions (score each 0-4):"]
    for c in DIMENSIONS:
        rubric.append(f"- {c.name}: {c.definition} Anchors: " + "; ".join(f"{i}={a}" for i, a in enumerate(c.anchors)))
    rubric.append("Failure modes (flag true/false with evidence):")
    rubric += [f"- {c.name}: {c.definition}" for c in FAILURE_MODES]
    gt = task.ground_truth
    facts = [f"{i + 1}. {f.value}" for i, f in enumerate(gt.facts)]
    steps = []
    for i, t in enumerate(traj.turns, 1):
        if t.action == "command":
            steps.append(f"[turn {i}] $ {t.command}\n(exit {t.exit_code}{', timed out' if t.timed_out else ''})\n"
                         f"{_cut(t.observation or '', OBSERVATION_MAX)}")
        elif t.action == "format_error":
            steps.append(f"[turn {i}] malformed turn: {t.format_error}")
    report = traj.report or {}
    system = ("You grade a terminal subagent: it ran shell commands for a main coding agent and wrote a report. "
              "Judge only from the evidence below. Answer with one JSON object and nothing else: "
              '{"dimensions": {NAME: {"score": 0-4, "rationale": "..."}}, '
              '"failure_modes": {NAME: {"flag": true|false, "evidence": "..."}}, '
              '"items": [true|false per ground-truth fact, in order: does the report state it?]}. '
              f"Keep each rationale/evidence under {RATIONALE_MAX} characters.\n\n" + "\n".join(rubric))
    user = (f"## Request\n{task.request}\n\n"
            f"## Ground truth (hidden from the subagent)\nexit status: {gt.exit_status}\n"
            + ("\n".join(facts) or "(no facts)") +
            f"\nreference solution: {len(task.reference.commands) if task.reference else '?'} command(s)\n\n"
            f"## Trajectory ({len(traj.turns)} turns, finish: {traj.finish_reason})\n" + "\n\n".join(steps) +
            "\n\n## Report\n" + (f"status: {report.get('status')}\nsummary: {report.get('summary')}\n"
                                 f"details: {report.get('details')}" if traj.report else "(no report)"))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _extract_json(text: str) -> Any:
    """Strict: the reply must be a JSON object, optionally inside a ``` fence."""
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`")
        s = s[4:] if s.startswith("json") else s
    try:
        return json.loads(s, strict=False)  # strict=False: a raw control char inside a string is harmless
    except json.JSONDecodeError as e:
        raise VerdictParseError(f"the judge reply is not JSON ({e.msg} at char {e.pos}): {text[:200]!r}") from None


def parse_verdict(text: str, task: Task, traj: Trajectory, judge: str) -> Verdict:
    """Parse and validate an LLM reply against the schema's meaning; raise VerdictParseError on anything off.
    Task items carry both the LLM's answer and the programmatic check."""
    data = _extract_json(text)
    if not isinstance(data, dict):
        raise VerdictParseError(f"the judge reply is JSON but not an object: {text[:200]!r}")
    dims, fails = data.get("dimensions"), data.get("failure_modes")
    if not isinstance(dims, dict) or not isinstance(fails, dict):
        raise VerdictParseError("the judge reply lacks 'dimensions' or 'failure_modes' objects")
    out = Verdict(judge=judge)
    for c in DIMENSIONS:
        d = dims.get(c.name)
        score = d.get("score") if isinstance(d, dict) else None
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0 <= score <= MAX_SCORE:
            raise VerdictParseError(f"dimension '{c.name}': score must be a number in 0..{MAX_SCORE}, got {d!r}")
        out.dimensions[c.name] = DimensionScore(float(score), str(d.get("rationale", ""))[:RATIONALE_MAX])
    for c in FAILURE_MODES:
        f = fails.get(c.name)
        if not isinstance(f, dict) or not isinstance(f.get("flag"), bool):
            raise VerdictParseError(f"failure mode '{c.name}': needs a boolean 'flag', got {f!r}")
        out.failures[c.name] = FailureFlag(f["flag"], str(f.get("evidence", ""))[:RATIONALE_MAX])
    answers = data.get("items") or []
    out.items = task_items(task, report_text(traj) if traj.report else "")
    for item, ans in zip(out.items, answers if isinstance(answers, list) else []):
        item.llm = bool(ans) if isinstance(ans, bool) else None
    return out


def aggregate(verdicts: list[Verdict], judge: str) -> Verdict:
    """k-sample voting: median score per dimension, majority per flag and item; agreement = the fraction of
    (sample, field) pairs that agree with the aggregate (scores within 1 point)."""
    if len(verdicts) == 1:
        return verdicts[0]
    out = Verdict(judge=judge, samples=len(verdicts))
    agree = total = 0
    for c in DIMENSIONS:
        scores = [v.dimensions[c.name].score for v in verdicts]
        med = float(statistics.median(scores))
        closest = min(verdicts, key=lambda v: abs(v.dimensions[c.name].score - med))
        out.dimensions[c.name] = DimensionScore(med, closest.dimensions[c.name].rationale)
        agree += sum(abs(s - med) <= 1 for s in scores)
        total += len(scores)
    for c in FAILURE_MODES:
        flags = [v.failures[c.name].flag for v in verdicts]
        maj = sum(flags) * 2 > len(flags)
        out.failures[c.name] = FailureFlag(maj, next((v.failures[c.name].evidence for v in verdicts
                                                      if v.failures[c.name].flag == maj), ""))
        agree += sum(f == maj for f in flags)
        total += len(flags)
    out.items = [ItemCheck(i.id, i.text, i.code) for i in verdicts[0].items]
    for k, item in enumerate(out.items):
        answers = [v.items[k].llm for v in verdicts if v.items[k].llm is not None]
        item.llm = (sum(answers) * 2 > len(answers)) if answers else None
    out.agreement = round(agree / total, 4)
    return out


class OpenAIJudge:
    """Any OpenAI-compatible endpoint via the shared client. JSON mode when `json_mode`; otherwise, or when the
    endpoint ignores it, the strict parser; one repair retry on a malformed reply, then unjudgeable."""

    def __init__(self, cfg, client=None, json_mode: bool = True):
        from core.openai_api import OpenAIClient
        self.cfg = cfg
        self.client = client or OpenAIClient(cfg.base_url, cfg.model_name, api_key_env=cfg.api_key_env,
                                             timeout_s=cfg.request_timeout_s, max_retries=cfg.max_retries,
                                             max_concurrency=cfg.max_concurrency,
                                             requests_per_minute=cfg.requests_per_minute,
                                             tokens_per_minute=cfg.tokens_per_minute)
        self.json_mode = json_mode
        self.retries_itself = True  # the shared client's timeouts + backoff; the pool only bounds the total
        self.name = f"openai:{cfg.model_name}"

    async def _one(self, task: Task, traj: Trajectory) -> Verdict:
        from core.openai_api import EndpointError, message_text
        messages = render_prompt(task, traj)
        params: dict[str, Any] = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        if self.json_mode:
            params["response_format"] = {"type": "json_object"}
        try:
            text = message_text(await self.client.chat(messages, **params))
            try:
                return parse_verdict(text, task, traj, self.name)
            except VerdictParseError as e:
                repair = messages + [{"role": "assistant", "content": text},
                                     {"role": "user", "content": f"That reply was invalid: {e}. Answer again with "
                                                                 "only the JSON object described above."}]
                text = message_text(await self.client.chat(repair, **params))
                try:
                    return parse_verdict(text, task, traj, self.name)
                except VerdictParseError as e2:
                    return Verdict.unjudgeable(self.name, f"malformed_json: {e2}")
        except EndpointError as e:
            return Verdict.unjudgeable(self.name, f"endpoint_error: {e}")

    async def judge(self, task: Task, trajectory: Trajectory) -> Verdict:
        import asyncio
        verdicts = await asyncio.gather(*[self._one(task, trajectory) for _ in range(self.cfg.samples)])
        good = [v for v in verdicts if v.ok]
        if not good:
            return verdicts[0]
        return aggregate(good, self.name)

    async def close(self) -> None:
        await self.client.close()
