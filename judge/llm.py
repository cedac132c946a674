"""LLM judging: the judge prompt, the verdict as a pydantic model (its JSON schema for decoders, its
validation for replies), k-sample aggregation, and the OpenAI-compatible backend (the vLLM backend in judge/vllm_judge.py reuses all but the client)."""
from __future__ import annotations

import functools
import json
import statistics
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, create_model

from judge.rubric import DIMENSIONS, FAILURE_MODES, MAX_SCORE
from judge.rules import report_text, task_items
from judge.types import DimensionScore, FailureFlag, ItemCheck, Verdict
from rollout.trajectory import Trajectory
from tasks.types import Task

RATIONALE_MAX = 160        # bounded strings keep guided decoding short on a random model
OBSERVATION_MAX = 2000     # characters of each observation shown to the judge (head + tail)


class VerdictParseError(ValueError):
    pass


def _text(text_max: int) -> Any:
    """A rationale/evidence string, bounded by maxLength: without a bound a random model writes until
    max_tokens. Not by a pattern: `vllm serve` (xgrammar) fails to compile the whole verdict schema with a
    bounded-pattern string in it (HTTP 500, "per_rule_fsm_hashes" check), though small schemas compile.
    Validation cuts a longer string instead of rejecting the verdict."""
    return Annotated[str, AfterValidator(lambda s: s[:text_max]),
                     WithJsonSchema({"type": "string", "maxLength": text_max})]


_STRICT = ConfigDict(extra="forbid", strict=True)


@functools.lru_cache(maxsize=64)
def verdict_model(n_items: int, text_max: int = RATIONALE_MAX) -> type[BaseModel]:
    """The pydantic model of the verdict an LLM judge returns: every dimension scored 0..MAX_SCORE with a
    rationale, every failure mode flagged with evidence, one yes/no per ground-truth item (does the report
    state it?). Its JSON schema is what endpoints decode against (response_format, guided decoding); the
    same model validates the reply."""
    text = _text(text_max)
    score = create_model("DimensionScore", __config__=_STRICT,
                         score=(int, Field(ge=0, le=MAX_SCORE)), rationale=(text, ...))
    flag = create_model("FailureFlag", __config__=_STRICT, flag=(bool, ...), evidence=(text, ...))
    dims = create_model("Dimensions", __config__=_STRICT, **{c.name: (score, ...) for c in DIMENSIONS})
    fails = create_model("FailureModes", __config__=_STRICT, **{c.name: (flag, ...) for c in FAILURE_MODES})
    return create_model("LLMVerdict", __config__=_STRICT, dimensions=(dims, ...), failure_modes=(fails, ...),
                        items=(list[bool], Field(min_length=n_items, max_length=n_items)))


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema without $ref and titles: the plain form every decoder (xgrammar, OpenAI strict) accepts."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k not in ("title", "$defs")}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def verdict_schema(n_items: int, text_max: int = RATIONALE_MAX) -> dict[str, Any]:
    """The JSON schema of verdict_model(n_items, text_max). `text_max` bounds each rationale/evidence string,
    hence the verdict's length in tokens."""
    schema = verdict_model(n_items, text_max).model_json_schema()
    return _inline(schema, schema.get("$defs", {}))


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
    """The reply must be a JSON object, optionally inside a ``` fence."""
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`")
        s = s[4:] if s.startswith("json") else s
    try:
        return json.loads(s, strict=False)  # strict=False: a raw control char inside a string is harmless
    except json.JSONDecodeError as e:
        raise VerdictParseError(f"the judge reply is not JSON ({e.msg} at char {e.pos}): {text[:200]!r}") from None


def parse_verdict(text: str, task: Task, traj: Trajectory, judge: str, text_max: int = RATIONALE_MAX) -> Verdict:
    """Parse an LLM reply and validate it with verdict_model; raise VerdictParseError naming what is off.
    Task items carry both the LLM's answer and the programmatic check."""
    try:
        reply = verdict_model(len(task.ground_truth.facts), text_max).model_validate(_extract_json(text))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'reply'}: {err['msg']}" for err in e.errors()[:3])
        raise VerdictParseError(f"the verdict does not match the schema ({e.error_count()} error(s)): {problems}") \
            from None
    out = Verdict(judge=judge)
    for c in DIMENSIONS:
        d = getattr(reply.dimensions, c.name)
        out.dimensions[c.name] = DimensionScore(float(d.score), d.rationale)
    for c in FAILURE_MODES:
        f = getattr(reply.failure_modes, c.name)
        out.failures[c.name] = FailureFlag(f.flag, f.evidence)
    out.items = task_items(task, report_text(traj) if traj.report else "")
    for item, ans in zip(out.items, reply.items):
        item.llm = ans
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
    """Any OpenAI-compatible endpoint (core.openai_api.Endpoint). The verdict schema goes out as a strict
    `response_format` JSON schema (`cfg.response_format`: json_schema, else json_object or text for
    endpoints without structured outputs); the reply is validated by the same model. An invalid reply is
    answered with what was wrong and asked again, at most `cfg.invalid_verdict_retries` times, then the
    trajectory is unjudgeable. Endpoint retries (429, 5xx, timeouts) are the SDK's."""

    def __init__(self, cfg, client=None):
        from core.openai_api import Endpoint
        self.cfg = cfg
        self.client = client or Endpoint.from_config(cfg, cfg.model_name)
        self.retries_itself = True  # the SDK's timeouts + backoff; the pool only bounds the total
        self.name = f"openai:{cfg.model_name}"

    def response_format(self, n_items: int) -> dict[str, Any] | None:
        if self.cfg.response_format == "json_schema":
            return {"type": "json_schema", "json_schema": {
                "name": "verdict", "strict": True, "schema": verdict_schema(n_items, self.cfg.rationale_max_chars)}}
        if self.cfg.response_format == "json_object":
            return {"type": "json_object"}
        return None

    async def _one(self, task: Task, traj: Trajectory) -> Verdict:
        from core.openai_api import EndpointError, message_text
        messages = render_prompt(task, traj)
        params: dict[str, Any] = {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}
        if (fmt := self.response_format(len(task.ground_truth.facts))) is not None:
            params["response_format"] = fmt
        invalid = 0
        try:
            while True:
                text = message_text(await self.client.chat(messages, **params))
                try:
                    v = parse_verdict(text, task, traj, self.name, self.cfg.rationale_max_chars)
                    v.invalid_replies = invalid
                    return v
                except VerdictParseError as e:
                    invalid += 1
                    if invalid > self.cfg.invalid_verdict_retries:
                        v = Verdict.unjudgeable(self.name, f"malformed_json: {e}")
                        v.invalid_replies = invalid
                        return v
                    messages = messages + [
                        {"role": "assistant", "content": text},
                        {"role": "user", "content": f"That reply was invalid: {e}. Answer again with only the "
                                                    "JSON object described above."}]
        except EndpointError as e:
            v = Verdict.unjudgeable(self.name, f"endpoint_error: {e}")
            v.invalid_replies = invalid
            return v

    async def judge(self, task: Task, trajectory: Trajectory) -> Verdict:
        import asyncio
        verdicts = await asyncio.gather(*[self._one(task, trajectory) for _ in range(self.cfg.samples)])
        good = [v for v in verdicts if v.ok]
        out = aggregate(good, self.name) if good else verdicts[0]
        out.invalid_replies = sum(v.invalid_replies for v in verdicts)
        return out

    async def close(self) -> None:
        await self.client.close()
