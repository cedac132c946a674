"""Ground truth from what really ran: parsers that turn a command's output into checkable facts.

Pure functions (text in, facts out), one per kind of output the built-in tasks produce:
Python's `unittest -v`, Node's test runner (TAP), gcc/make diagnostics, C `assert`, Python
tracebacks, and plain program output. Each fact carries regexes that a report stating it matches
(all of them, case-insensitively); judge/rules.py checks reports with them.
"""
from __future__ import annotations

import re

from tasks.types import Fact

_UNITTEST_LINE = re.compile(r"^(test_\w+) \([\w.]+\) \.\.\. (ok|FAIL|ERROR|skipped.*)$", re.MULTILINE)
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests?", re.MULTILINE)
_EXCEPTION = re.compile(r"^(\w+(?:Error|Exception|Exit))\b:?(.*)$", re.MULTILINE)
_PY_FRAME = re.compile(r'File "(?:/work/repo/)?([^"]+)", line (\d+)')
_TAP_RESULT = re.compile(r"^(not ok|ok) \d+ - (.+)$", re.MULTILINE)
_TAP_COUNT = re.compile(r"^# (tests|pass|fail) (\d+)$", re.MULTILINE)
_TAP_ERROR_NAME = re.compile(r"^\s+name: '(\w+)'", re.MULTILINE)
# gcc/g++ ("file.c:12:5: error: msg") and javac ("File.java:12: error: msg")
_GCC_ERROR = re.compile(r"^([\w./-]+\.(?:c|h|cc|cpp|cxx|hh|hpp|java)):(\d+):(?:\d+:)? error: (.+)$", re.MULTILINE)
# Maven's compiler plugin: "[ERROR] /work/repo/src/main/java/a/B.java:[12,5] msg" (the path absolute in the sandbox)
_MAVEN_ERROR = re.compile(r"^\[ERROR\] (?:/work/repo/)?(/?[\w./-]+\.java):\[(\d+),\d+\] (.+)$", re.MULTILINE)
# tsc --pretty false: "src/calc.ts(5,3): error TS2322: msg"
_TSC_ERROR = re.compile(r"^([\w./-]+\.tsx?)\((\d+),\d+\): error (TS\d+): (.+)$", re.MULTILINE)
_MAKE_NO_RULE = re.compile(r"No rule to make target '([^']+)'")
_LINK_UNDEFINED = re.compile(r"undefined reference to `(\w+)'")
_C_ASSERT = re.compile(r"([\w./-]+\.c):(\d+): \w+: Assertion `(.+)' failed")


def _word(s: str) -> str:
    """A regex matching s as a whole word (or token), whatever it contains."""
    return rf"(?<![\w.]){re.escape(s)}(?![\w])"


def name_pattern(name: str) -> str:
    """A regex matching a test's name whole, as a runner prints it or a report states it: not inside
    a longer name (`testCreate` in `testCreateWith`, `test_x` in `test_x[1]`, `parse` in
    `parse-json` or `re-parse`, `mod` in `mod.Class` or `mod::test`), though the name may be
    qualified before it (`Class.testCreate`, `file.py::test_x`) or followed by a call's `(`."""
    return rf"(?<![\w\[-]){re.escape(name)}(?![\w\[-]|[.:]\w)"


def count_fact(failed: int, total: int, noun: str = "tests", quoted: tuple[str, ...] = ()) -> Fact:
    """'2 of 5 tests fail' / 'all 5 tests pass', matched as numbers in context: both numbers in one
    clause (either order) for a failure, the total next to a word of passing for a success; a digit
    elsewhere in a report (a line number, a version) does not count. `quoted`: the runner's own
    summary lines ('# tests 5', '# fail 2'): the fact is stated in their words, which a report may
    also use (a model that copies continues the line it saw; '2 of 5' is a number it must compute)."""
    if failed:
        value = f"{failed} of {total} {noun} fail"
        pattern = rf"\b{failed}\b[^.;\n]{{0,30}}\b{total}\b|\b{total}\b[^.;\n]{{0,30}}\b{failed}\b"
    else:
        value = f"all {total} {noun} pass"
        pattern = rf"\b{total}\b[^.;\n]{{0,40}}(pass|\bok\b|succe)|(pass|succe)[^.;\n]{{0,40}}\b{total}\b"
    phrases = [value]
    if quoted:
        value, phrases = ", ".join(quoted), list(quoted)
        pattern += "|" + r"\W{0,6}".join(re.escape(q) for q in quoted)
    return Fact("counts", value, [pattern], contradictions=[misstated(p) for p in phrases])


def misstated(phrase: str) -> str:
    """A regex for `phrase` with other numbers in it ('# tests 5' for '# tests 4', '3 of 4 tests fail'
    for '2 of 4 tests fail'): the words of a fact around a number the output does not show."""
    pattern = re.sub(r"\d+", lambda m: r"\d+", re.escape(phrase))
    return rf"(?<!\w)(?!{re.escape(phrase)}(?!\d)){pattern}(?!\d)"


def missing_evidence(fact: Fact, visible: str) -> list[str]:
    """The evidence strings of a fact that are not in `visible` (what the agent saw); a fact without
    evidence is unobservable as a whole (['(no evidence recorded)'])."""
    if not fact.evidence:
        return ["(no evidence recorded)"]
    return [e for e in fact.evidence if e not in visible]


def location_fact(path: str, line: int | str, style: str = "colon") -> Fact:
    """A file and line, stated as 'file:line' (style colon, as compilers print it) or 'file line N'
    (style line, as Python tracebacks print it); a report may use either form, the file named whole."""
    name = path.rsplit("/", 1)[-1]
    value = f"{name}:{line}" if style == "colon" else f"{name} line {line}"
    # the name whole: mini.py:5 is not test_mini.py:5
    return Fact("error_location", value, [rf"(?<![\w.-]){re.escape(name)}\W{{1,3}}(line\s+)?{line}\b"])


def python_traceback_facts(output: str) -> list[Fact]:
    """The exception type and the innermost repository frame of a Python traceback."""
    facts: list[Fact] = []
    excs = _EXCEPTION.findall(output)
    if excs:
        etype, msg = excs[-1]
        facts.append(Fact("error_message", f"{etype}:{msg}".strip(), [_word(etype)]))
    frames = [(f, ln) for f, ln in _PY_FRAME.findall(output) if not f.startswith("/")]
    if frames:
        facts.append(location_fact(*frames[-1], style="line"))
    return facts


def unittest_facts(output: str) -> tuple[list[Fact], dict]:
    """Facts from `python -m unittest -v`: failing tests and how, counts, or a load error."""
    results = dict(_UNITTEST_LINE.findall(output))
    ran = _UNITTEST_RAN.search(output)
    observed = {"tests": results, "ran": int(ran.group(1)) if ran else 0}
    facts: list[Fact] = []
    if not results:  # the test module did not even import: a load error
        return python_traceback_facts(output), observed
    failing = [name for name, status in results.items() if status in ("FAIL", "ERROR")]
    for name in failing:
        block = output.split(f": {name} (", 1)[-1]
        block = block.split("\n======", 1)[0].split("\n------", 2)
        body = block[1] if len(block) > 1 else block[0]
        excs = _EXCEPTION.findall(body)
        etype = excs[-1][0] if excs else "error"
        facts.append(Fact("failing_test", f"{name} fails with {etype}", [_word(name), _word(etype)]))
    if "_FailedTest" in output:   # a test module failed to import: where and why
        facts += [f for f in python_traceback_facts(output) if f.kind == "error_location"]
    facts.append(count_fact(len(failing), observed["ran"]))
    return facts, observed


def tap_facts(output: str) -> tuple[list[Fact], dict]:
    """Facts from Node's test runner (TAP): failing tests and the error name, counts."""
    results = {name.strip(): status for status, name in _TAP_RESULT.findall(output)}
    counts = {k: int(v) for k, v in _TAP_COUNT.findall(output)}
    facts: list[Fact] = []
    failing = [n for n, s in results.items() if s == "not ok"]
    errors = _TAP_ERROR_NAME.findall(output)
    for i, name in enumerate(failing):
        etype = errors[i] if i < len(errors) else "error"
        facts.append(Fact("failing_test", f"'{name}' fails with {etype}", [re.escape(name), _word(etype)]))
    facts.append(count_fact(len(failing), counts.get("tests", len(results))))
    return facts, {"tests": results, "counts": counts}


def build_facts(output: str) -> list[Fact]:
    """Facts from make/gcc/javac/Maven/tsc: the first compiler error with file:line, a missing file, a link error,
    or a failed C assertion; the compiler and linker facts carry their evidence (the lines they
    come from)."""
    for compiler, where in ((_GCC_ERROR, "{path}:{line}:"), (_MAVEN_ERROR, "{path}:[{line},")):
        if m := compiler.search(output):
            path, line, msg = m.groups()
            key = re.findall(r"[‘'](\w+)[’']", msg)
            words = re.findall(r"[A-Za-z_]\w+", msg)[:2]   # no name in quotes: the message's first words, any quotes
            pats = [_word(key[0])] if key else [".{1,8}".join(map(re.escape, words))] if words else [r"error"]
            loc = location_fact(path, line)   # a report may say B.java:12 or B.java line 12
            loc.evidence = [where.format(path=path, line=line)]
            return [Fact("error_message", msg.strip(), pats, [msg.strip()]), loc]
    if m := _TSC_ERROR.search(output):
        path, line, code, msg = m.groups()
        loc = location_fact(path, line)   # a report may say calc.ts:5 or calc.ts line 5
        loc.evidence = [f"{path}({line},"]
        return [Fact("error_message", f"{code}: {msg.strip()}", [_word(code)], [f"error {code}"]), loc]
    if m := _MAKE_NO_RULE.search(output):
        return [Fact("error_message", f"no rule to make target '{m.group(1)}' (the file is missing)",
                     [_word(m.group(1))], [m.group(0)])]
    if m := _LINK_UNDEFINED.search(output):
        return [Fact("error_message", f"undefined reference to {m.group(1)}", [_word(m.group(1))], [m.group(0)])]
    if m := _C_ASSERT.search(output):
        path, line, expr = m.groups()
        return [Fact("error_message", f"assertion failed: {expr}", [r"assert"]), location_fact(path, line)]
    return []


def output_facts(output: str, patterns: list[str]) -> list[Fact]:
    """Facts from a program's normal output: each pattern's first group, where it matches."""
    facts = []
    for p in patterns:
        if m := re.search(p, output, re.MULTILINE):
            value = m.group(1)
            facts.append(Fact("output", m.group(0).strip(), [_word(value)]))
    return facts
