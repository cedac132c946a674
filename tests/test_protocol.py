"""The subagent protocol's pure parts: turn parser (every malformed case), report structure, messages."""
import re

import pytest

from core import protocol
from core.protocol import Observation, parse_turn

REPORT = ("<report><status>failure</status><summary>2 tests fail</summary>"
          "<details>tests/test_a.py::test_x AssertionError at a.py:12; exit status 1</details></report>")


def test_command_with_reasoning():
    p = parse_turn("I will run the tests.\n<command>pytest -q tests/</command>")
    assert (p.action, p.command, p.error) == ("command", "pytest -q tests/", None)


def test_command_keeps_inner_markup_and_strips_whitespace():
    p = parse_turn("<command>\n  grep -n '<div>' x.html | head\n</command>\n\n")
    assert p.command == "grep -n '<div>' x.html | head"


def test_report_fields():
    p = parse_turn("Done.\n" + REPORT)
    assert p.action == "report"
    assert p.report == {"status": "failure", "summary": "2 tests fail",
                        "details": "tests/test_a.py::test_x AssertionError at a.py:12; exit status 1"}


def test_report_status_case_normalised():
    p = parse_turn(REPORT.replace("failure", "SUCCESS"))
    assert p.report["status"] == "success"


@pytest.mark.parametrize("text, why", [
    ("I think the tests pass.", "no <command> or <report>"),
    ("<command>ls</command><command>pwd</command>", "two commands"),
    ("<command>ls</command>" + REPORT, "a command and a report"),
    (REPORT + REPORT, "two reports"),
    ("<command>ls -la", "unclosed <command>"),
    ("<report><status>success</status><summary>ok</summary><details>x</details>", "unclosed <report>"),
    ("<command>ls</command> and then I will report", "text after the closing </command>"),
    ("<command>   </command>", "empty <command>"),
    ("ls</command>", "without its opening tag"),
    ("</report><command>ls</command>", "stray tag </report>"),
    ("<command>ls</report></command>", "stray tag </report>"),
    ("<report><status>success</status><details>x</details></report>", "report without <summary>"),
    ("<report><summary>s</summary><details>x</details></report>", "report without <status>"),
    ("<report><status>success</status><summary>s</summary></report>", "report without <details>"),
    ("<report><status>great</status><summary>s</summary><details>x</details></report>", "is not one of"),
    ("<report><status>success</status><summary> </summary><details>x</details></report>", "empty <summary>"),
    ("<report><status>success</status><status>failure</status><summary>s</summary><details>x</details></report>",
     "more than one <status>"),
])
def test_malformed_turns_are_format_errors(text, why):
    p = parse_turn(text)
    assert p.action == "format_error" and p.command is None and p.report is None
    assert why in p.error, p.error


def test_parser_is_pure():
    text = "<command>ls</command>"
    assert parse_turn(text) == parse_turn(text)


def test_protocol_regex_only_produces_wellformed_turns():
    rx = re.compile(protocol.TURN_REGEX)
    for text in ["<command>ls</command>", "run it <command>cat setup.py</command>",
                 "<report><status>blocked</status><summary>no tool</summary><details></details></report>"]:
        assert rx.fullmatch(text)
        assert parse_turn(text).action in ("command", "report")


def test_messages_and_observation():
    msgs = protocol.initial_messages("Run the tests.", "/work/repo", max_turns=7)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "at most 7 turns" in msgs[0]["content"] and "<report>" in msgs[0]["content"]
    assert msgs[1]["content"].endswith("Working directory: /work/repo")
    obs = protocol.format_observation(Observation(124, "partial", timed_out=True, truncated=True), turns_left=3)
    assert "<exit_code>124</exit_code>" in obs and "timed out" in obs and "truncated" in obs
    assert "Turns left: 3." in obs
    last = protocol.format_observation(Observation(0, ""), turns_left=1)
    assert "(no output)" in last and "last turn" in last
    err = protocol.format_error_message("empty <command> block", turns_left=2)
    assert "empty <command> block" in err and "Nothing was run" in err


def test_parse_observation_reads_back_what_format_observation_wrote():
    for obs in (Observation(1, "FAILED test_x\nline 2"), Observation(124, "partial", timed_out=True, truncated=True),
                Observation(0, "")):
        assert protocol.parse_observation(protocol.format_observation(obs, turns_left=2)) == (obs.exit_code, obs.output)
    assert protocol.parse_observation("Run the tests.\n\nWorking directory: /work/repo") is None
    assert protocol.parse_observation(protocol.format_error_message("unclosed <report>", 2)) is None
