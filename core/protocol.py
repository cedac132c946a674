"""The subagent protocol: the system prompt, the request and observation messages, and a pure
parser for assistant turns. docs/protocol.md is the human-readable version of this file.

Every assistant turn must be: optional short reasoning, then exactly one of
    <command>ONE shell command</command>
    <report><status>success|failure|error|blocked</status><summary>...</summary><details>...</details></report>
and nothing but whitespace after it. Anything else is a format error with a defined observation.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

STATUSES = ("success", "failure", "error", "blocked")
STOP_STRINGS = ("</command>", "</report>")

SYSTEM_PROMPT = """\
You are a terminal-execution subagent. A main coding agent delegates a task to you: run \
commands in a terminal, read their output, and send back a short, exact report. The main agent \
sees only your report, never the terminal.

Rules:
- Each turn, think briefly if you need to, then write exactly ONE shell command as \
<command>COMMAND</command>. It runs in a bash shell in the repository; the shell keeps its \
working directory and variables between turns. You then receive its exit code and output.
- You have at most {max_turns} turns in total, the report included. Do not modify files unless \
the request asks you to.
- Finish with the report, and nothing after it:
<report>
<status>success|failure|error|blocked</status>
<summary>one or two sentences: the answer to the request</summary>
<details>what the main agent needs: failing tests by name, errors with file:line, exit \
status, counts</details>
</report>
status: success = the requested thing worked; failure = it ran and failed (e.g. tests fail); \
error = it could not run (e.g. a build or import error); blocked = you could not do it \
(e.g. a missing tool).
- Never write a command and a report in the same turn."""


@dataclass
class ParsedTurn:
    """What an assistant turn asked for. action: "command" | "report" | "format_error"."""
    action: str
    command: str | None = None
    report: dict[str, str] | None = None
    error: str | None = None           # why the turn is malformed (action == "format_error")


@dataclass
class Observation:
    """What the sandbox said about one command, as the next user message shows it."""
    exit_code: int
    output: str
    timed_out: bool = False
    truncated: bool = False
    extra: dict = field(default_factory=dict)


def system_prompt(max_turns: int) -> str:
    return SYSTEM_PROMPT.format(max_turns=max_turns)


def request_message(request: str, workdir: str) -> str:
    """The first user message: the main agent's words, plus where the repository is."""
    return f"{request.strip()}\n\nWorking directory: {workdir}"


def initial_messages(request: str, workdir: str, max_turns: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(max_turns)},
            {"role": "user", "content": request_message(request, workdir)}]


def format_observation(obs: Observation, turns_left: int) -> str:
    """The user message after a command: exit code, flags, then the (already capped) output."""
    flags = []
    if obs.timed_out:
        flags.append("the command timed out and was killed")
    if obs.truncated:
        flags.append("the output was truncated: its middle was dropped")
    head = f"<observation>\n<exit_code>{obs.exit_code}</exit_code>\n"
    if flags:
        head += f"<note>{'; '.join(flags)}</note>\n"
    body = obs.output if obs.output else "(no output)"
    return f"{head}<output>\n{body}\n</output>\n</observation>\n{_turns_left(turns_left)}"


_OBSERVATION = re.compile(r"<observation>\n<exit_code>(-?\d+)</exit_code>\n(?:<note>.*?</note>\n)?<output>\n(.*?)\n</output>",
                          re.DOTALL)


def parse_observation(message: str) -> tuple[int, str] | None:
    """(exit code, output) of a message format_observation wrote; None for any other message."""
    hit = _OBSERVATION.match(message)
    if hit is None:
        return None
    output = hit.group(2)
    return int(hit.group(1)), "" if output == "(no output)" else output


def format_error_message(error: str, turns_left: int) -> str:
    """The user message after a malformed turn: what was wrong and the expected form. Nothing ran."""
    return (f"<format_error>{error}. Nothing was run. Reply with brief reasoning and then exactly one "
            f"<command>...</command>, or the final <report>...</report> with <status>, <summary> and "
            f"<details>.</format_error>\n{_turns_left(turns_left)}")


def _turns_left(n: int) -> str:
    if n <= 1:
        return "This is your last turn: write the <report> now."
    return f"Turns left: {n}."


# The grammar of a well-formed turn, for constrained decoding (sampling.constrain=protocol): a short
# reasoning line, then a simple command or a complete report. Deliberately small: it exists so an
# untrained model still exercises the whole loop (commands run, reports end episodes).
TURN_REGEX = (r"[a-z ]{0,24}(<command>(ls|pwd|cat [a-z_.]{1,12}|echo [a-z]{1,8}|[a-z]{2,6})</command>"
              r"|<report><status>(success|failure|error|blocked)</status><summary>[a-z ]{1,16}</summary>"
              r"<details>[a-z0-9 ]{0,12}</details></report>)")

_OPEN = re.compile(r"<(command|report)>")
_TAG = re.compile(r"</?(command|report)>")


def parse_turn(text: str) -> ParsedTurn:
    """Parse one assistant turn. Pure: the same text always gives the same result.

    Format errors (each has its own message): no block; more than one block (two commands, or a
    command and a report); an unclosed or stray tag; text other than whitespace after the block;
    an empty command; a report missing <status>/<summary>/<details> or with an unknown status.
    """
    tags = [(m.group(0), m.start(), m.end()) for m in _TAG.finditer(text)]
    if not tags:
        return _err("no <command> or <report> block found")
    opens = [t for t in tags if not t[0].startswith("</")]
    if len(opens) > 1:
        kinds = sorted({t[0] for t in opens})
        what = "two commands" if kinds == ["<command>"] else (
            "two reports" if kinds == ["<report>"] else "a command and a report")
        return _err(f"more than one block in one turn ({what}); write exactly one per turn")
    if not opens:
        return _err(f"closing tag {tags[0][0]} without its opening tag")
    tag, start, body_start = opens[0]
    kind = tag[1:-1]
    close = f"</{kind}>"
    end = text.find(close, body_start)
    if end < 0:
        return _err(f"unclosed <{kind}> block: {close} is missing")
    stray = [t for t in tags if t[1] < start or (t[1] > body_start and t[1] != end)]
    if stray:
        return _err(f"stray tag {stray[0][0]} outside the <{kind}> block")
    trailing = text[end + len(close):]
    if trailing.strip():
        return _err(f"text after the closing {close}: the block must end the turn")
    body = text[body_start:end]
    if kind == "command":
        command = body.strip()
        if not command:
            return _err("empty <command> block")
        return ParsedTurn("command", command=command)
    report, problem = parse_report(body)
    if problem:
        return _err(problem)
    return ParsedTurn("report", report=report)


def parse_report(body: str) -> tuple[dict[str, str] | None, str | None]:
    """The inner structure of a report: (fields, None) or (None, what is wrong)."""
    fields: dict[str, str] = {}
    for name in ("status", "summary", "details"):
        found = re.findall(rf"<{name}>(.*?)</{name}>", body, flags=re.DOTALL)
        if not found:
            return None, f"report without <{name}>...</{name}>"
        if len(found) > 1:
            return None, f"report with more than one <{name}>"
        fields[name] = found[0].strip()
    if fields["status"].lower() not in STATUSES:
        return None, f"report status {fields['status']!r} is not one of {', '.join(STATUSES)}"
    fields["status"] = fields["status"].lower()
    if not fields["summary"]:
        return None, "report with an empty <summary>"
    return fields, None


def _err(msg: str) -> ParsedTurn:
    return ParsedTurn("format_error", error=msg)
