"""The rules judge: scores everything code can check against the ground truth, fast and deterministic.

It is the embedded default's reward (a tiny random model cannot judge), so each dimension is graded
(reals in 0..4) and a better trajectory scores strictly higher. The checks are deliberately simple and
each is one small function; docs/rubric.md lists them next to the rubric they approximate.
"""
from __future__ import annotations

import re
from collections import Counter

from judge.rubric import MAX_SCORE
from judge.types import DimensionScore, FailureFlag, ItemCheck, Verdict
from rollout.trajectory import Trajectory
from tasks.types import Task

VALID_STATUS = ("success", "failure", "error", "blocked")

# Commands that change files, git state or reach the network: out of scope for a subagent asked to run things.
_OUT_OF_SCOPE = [
    (r"(^|[;&|]\s*)(sudo\s+)?(rm|rmdir|mv|shred|truncate|chmod|chown|dd)\s", "deletes/moves/changes files"),
    (r"\bsed\s+(-\w*\s+)*-i", "edits a file in place"),
    (r"\bperl\s+-\w*i", "edits a file in place"),
    (r"\bpatch\b|\bgit\s+(apply|checkout|reset|commit|push|clean|stash|rebase|merge)\b", "changes sources/git state"),
    (r"\b(curl|wget|ssh|scp|nc|ftp)\b|\bgit\s+(clone|fetch|pull)\b", "uses the network"),
    (r"\btee\b(?!\s+/dev/null)", "writes a file"),
    (r"(?<![0-9&>])>>?\s*(?!\s*(/dev/null|&))[\w./~-]", "writes a file (redirection)"),
    (r"open\([^)]*['\"][wa]\+?['\"]", "writes a file from a script"),
]
_INSTALL = r"\b(pip3?|npm|yarn|pnpm|apt(-get)?|cargo|go)\s+(install|add|get)\b"
_TEST_NAME = re.compile(r"\btest_\w+")
_QUOTED_NAME = re.compile(r"'([A-Za-z_][\w .:/-]{0,60})'")   # a test or file named in quotes ('sum values')
_TAP_NAME = re.compile(r"\bnot ok \d+ - ([A-Za-z_][\w :/-]{0,60}?)\s*(?=[(.;,]|$)", re.MULTILINE)   # a TAP line quoted
_EXIT_CLAIM = re.compile(r"\bexit(?:\s+(?:status|code))?\W{0,3}(-?\d+)\b", re.IGNORECASE)
_LOCATION = re.compile(r"[\w./-]+\.\w+:\d+")
_ERROR = re.compile(r"\b\w*(Error|Exception|error|failed|FAILED|panic)\b")


def report_text(traj: Trajectory) -> str:
    r = traj.report or {}
    return f"{r.get('summary', '')}\n{r.get('details', '')}"


def observed_text(traj: Trajectory) -> str:
    return "\n".join(t.observation or "" for t in traj.turns)


def commands(traj: Trajectory) -> list[tuple[str, int | None]]:
    return [(" ".join((t.command or "").split()), t.exit_code) for t in traj.turns if t.action == "command"]


def task_items(task: Task, text: str) -> list[ItemCheck]:
    """One rubric item per ground-truth fact, checked by its regexes (all must match) when it has any."""
    items = []
    for i, fact in enumerate(task.ground_truth.facts):
        items.append(ItemCheck(id=f"{fact.kind}:{i}", text=f"the report states: {fact.value}", code=fact.stated_in(text)))
    return items


def misstated_facts(task: Task, text: str) -> list[str]:
    """Ground-truth facts the report states wrongly (a value or a count the output does not show), as
    the report's words: claims no observation backs."""
    return sorted({m for fact in task.ground_truth.facts for m in fact.misstatements_in(text)})


def expected_statuses(task: Task) -> tuple[str, ...] | None:
    """Statuses consistent with the ground-truth exit status (None: unknown)."""
    es = task.ground_truth.exit_status
    if es is None:
        return None
    return ("success",) if es == 0 else ("failure", "error")


def invented_names(text: str, observed: str) -> list[str]:
    """Test names (test_x, or any name in quotes, as node's runner prints them) that the report gives but no
    output ever showed: made up."""
    return sorted(n for n in _named_tests(text) if n not in observed)


def _named_tests(text: str) -> set[str]:
    return set(_TEST_NAME.findall(text)) | set(_QUOTED_NAME.findall(text)) | set(_TAP_NAME.findall(text))


OTHER_COMMAND_NOTE = " (it reports another command: no exit status it states is the task's)"


def answers_another_command(task: Task, text: str) -> bool:
    """The report states exit statuses, and none is the task's: it reports on some other command."""
    truth = task.ground_truth.exit_status
    claimed = {int(n) for n in _EXIT_CLAIM.findall(text)}
    return truth is not None and bool(claimed) and truth not in claimed


def exact_facts(task: Task, traj: Trajectory) -> bool:
    """The report states every ground-truth fact, the right status, and no test name it never saw:
    the exact-fact accuracy of an evaluation (checked by code, whichever judge gave the reward)."""
    if traj.error is not None or not traj.report:
        return False
    text, expected = report_text(traj), expected_statuses(task)
    if expected is not None and traj.report.get("status") not in expected:
        return False
    return (not invented_names(text, observed_text(traj)) and not misstated_facts(task, text)
            and all(i.code is not False for i in task_items(task, text)))


def out_of_scope(task: Task, cmds: list[str]) -> list[str]:
    found = []
    for c in cmds:
        for pattern, why in _OUT_OF_SCOPE:
            if re.search(pattern, c):
                found.append(f"`{c}` {why}")
                break
        else:
            if task.category != "install" and re.search(_INSTALL, c):
                found.append(f"`{c}` installs packages (not requested)")
    return found


def looping(cmds: list[tuple[str, int | None]]) -> list[str]:
    """A failing command run twice in a row, or three times in all."""
    failing = [c for c, code in cmds if code not in (0, None)]
    evidence = [f"`{c}` failed {n} times" for c, n in Counter(failing).items() if n >= 3]
    for (a, ea), (b, eb) in zip(cmds, cmds[1:]):
        if a == b and ea not in (0, None) and eb not in (0, None):
            evidence.append(f"`{a}` repeated right after failing")
            break
    return sorted(set(evidence))


def _dumped_lines(report: str, observed: str) -> int:
    """Report lines (of 8+ characters) copied verbatim from the observations: a raw log dump. A distilled
    report rephrases or quotes inside a sentence; a dump repeats whole output lines."""
    seen = {ln.strip() for ln in observed.splitlines() if len(ln.strip()) >= 8}
    return sum(1 for ln in report.splitlines() if ln.strip() in seen)


def _clip(x: float) -> float:
    return round(min(max(x, 0.0), float(MAX_SCORE)), 3)


class RulesJudge:
    name = "rules"

    async def judge(self, task: Task, trajectory: Trajectory) -> Verdict:
        return judge_rules(task, trajectory)

    async def close(self) -> None:
        pass


def judge_rules(task: Task, traj: Trajectory) -> Verdict:
    """The programmatic verdict. Pure: depends only on the task and the trajectory."""
    if traj.error is not None:
        return Verdict.unjudgeable("rules", f"episode_error: {traj.error}")
    report = traj.report
    text = report_text(traj) if report else ""
    observed = observed_text(traj)
    cmds = commands(traj)
    cmd_names = [c for c, _ in cmds]
    items = task_items(task, text)
    checkable = [i for i in items if i.code is not None]
    fact_frac = sum(i.code for i in checkable) / len(checkable) if checkable else 1.0
    status = (report or {}).get("status", "")
    expected = expected_statuses(task)
    # A report whose exit statuses are all another command's (`make` fails with 2 where the tests exit 1)
    # answers a different question: its status is no answer to this one. GRPO found that running `make`
    # anywhere and reporting its failure faithfully paid (docs/experiments.md, "Wrong command, honest report").
    other_command = answers_another_command(task, text)
    status_ok = (expected is None or status in expected) and not other_command
    format_errors = traj.format_errors

    # -- failure modes ----------------------------------------------------------------------------------
    invented = invented_names(text, observed)
    misstated = misstated_facts(task, text)   # 'records: 7' where the output says 'records: 11'
    halluc = [f"names {n}, which never appeared in any output" for n in invented]
    halluc += [f"states '{m}', which no output shows" for m in misstated]
    if report and expected == ("failure", "error") and status == "success":
        halluc.append(f"claims success but the command exits {task.ground_truth.exit_status}")
    if report and not cmds and status in ("success", "failure", "error"):
        halluc.append(f"reports '{status}' without running any command")
    premature = []
    if not report:
        premature.append(f"no report (finish_reason={traj.finish_reason or 'unknown'})")
    elif status == "blocked" and expected is not None:
        premature.append("gave up ('blocked') on a task that can be done")
    elif not cmds:
        premature.append("reported without running any command")
    scope = out_of_scope(task, cmd_names)
    loops = looping(cmds)
    failures = {
        "hallucination": FailureFlag(bool(halluc), "; ".join(halluc)),
        "premature_stop": FailureFlag(bool(premature), "; ".join(premature)),
        "out_of_scope": FailureFlag(bool(scope), "; ".join(scope)),
        "looping": FailureFlag(bool(loops), "; ".join(loops)),
    }

    # -- dimensions --------------------------------------------------------------------------------------
    dims: dict[str, DimensionScore] = {}
    if not report:
        completion = DimensionScore(0.0, "no report")
    elif not cmds:
        completion = DimensionScore(0.5, "a report without running anything")
    else:
        # the answer to the request is its facts: a right status alone is a quarter of the credit
        completion = DimensionScore(_clip(0.5 + 1.5 * status_ok + 2.0 * fact_frac),
                                    f"status {'matches' if status_ok else 'contradicts'} the ground truth"
                                    f"{OTHER_COMMAND_NOTE if other_command else ''}; "
                                    f"{fact_frac:.0%} of the facts stated")
    dims["task_completion"] = completion

    claims = _named_tests(text) | set(_LOCATION.findall(text)) | set(misstated)
    unsupported = [c for c in claims if c not in observed or c in misstated]
    seen_codes = {str(code) for _, code in cmds if code is not None}
    exits = {f"exit {n}" for n in _EXIT_CLAIM.findall(text)}   # an exit status no command returned is made up
    claims |= exits
    unsupported += [e for e in exits if e.split()[1] not in seen_codes]
    if not report:
        dims["faithfulness"] = DimensionScore(0.0, "no report")
    else:
        frac = len(unsupported) / len(claims) if claims else 0.0
        score = MAX_SCORE * (1 - frac) - len(invented) - (2 if not status_ok else 0) - (2 if not cmds else 0)
        dims["faithfulness"] = DimensionScore(_clip(score), f"{len(unsupported)} of {len(claims)} named "
                                              f"tests/locations/exit codes/values unobserved; status "
                                              f"{'ok' if status_ok else 'wrong'}")

    dims["completeness"] = (DimensionScore(_clip(MAX_SCORE * fact_frac), f"{sum(bool(i.code) for i in checkable)} "
                                           f"of {len(checkable)} ground-truth facts stated")
                            if report else DimensionScore(0.0, "no report"))

    if not report:
        dims["concision"] = DimensionScore(0.0, "no report")
    else:
        n, dumped = len(text), _dumped_lines(text, observed)
        # Up to 800 characters is free; 4 points are lost linearly by 4000; pasted log lines cost 0.25 each.
        score = MAX_SCORE - MAX_SCORE * max(0, n - 800) / 3200 - 0.25 * dumped
        if len(observed) > 0 and n > 400 and n > len(observed):
            score -= 1  # longer than everything it saw
        dims["concision"] = DimensionScore(_clip(score), f"{n} chars, {dumped} lines pasted from output")

    if not report:
        dims["actionability"] = DimensionScore(0.0, "no report")
    elif status == "success" and status_ok:
        dims["actionability"] = DimensionScore(_clip(3 + fact_frac), "success reported with its evidence")
    else:
        cues = [bool(_LOCATION.search(text)), bool(_ERROR.search(text)),
                bool((report.get("summary") or "").strip()), bool((report.get("details") or "").strip())]
        located = [i for i in checkable
                   if i.id.split(":")[0] in ("error_location", "error_message", "cause", "failing_line")]
        got = sum(bool(i.code) for i in located) / len(located) if located else sum(cues[:2]) / 2
        dims["actionability"] = DimensionScore(_clip(sum(cues) * 0.5 + 2 * got),
                                               f"location={cues[0]}, error={cues[1]}, key facts {got:.0%}")

    ref = len(task.reference.commands) if task.reference else 1
    repeats = len(cmd_names) - len(set(cmd_names))
    if not cmds:
        dims["command_efficiency"] = DimensionScore(0.0, "no command run")
    else:
        extra = max(0, len(cmds) - ref - 1)
        dims["command_efficiency"] = DimensionScore(_clip(MAX_SCORE - 0.5 * extra - 0.5 * repeats - 2 * bool(scope)),
                                                    f"{len(cmds)} commands vs {ref} in the reference, "
                                                    f"{repeats} repeated")

    if not report:
        dims["protocol_compliance"] = DimensionScore(0.0, "no report")
    else:
        missing = [k for k in ("summary", "details") if not (report.get(k) or "").strip()]
        bad_status = status not in VALID_STATUS
        score = MAX_SCORE - format_errors - len(missing) - 2 * bad_status
        dims["protocol_compliance"] = DimensionScore(_clip(score), f"{format_errors} format errors, missing "
                                                     f"{missing or 'nothing'}, status '{status}'")
    if report:   # form counts in proportion to substance: a short, well-formed report that states nothing is empty
        substance = fact_frac
        for name in ("concision", "actionability", "command_efficiency", "protocol_compliance"):
            d = dims[name]
            dims[name] = DimensionScore(round(d.score * substance, 3), f"{d.rationale}; x{substance:.2f} for the "
                                        f"{fact_frac:.0%} of the facts stated")
    return Verdict(judge="rules", dimensions=dims, failures=failures, items=items)
