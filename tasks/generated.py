"""The generated task family: small projects made from a seed, unlimited in number, with ground
truth by execution. The embedded default trains on it (`tasks.corpus: generated`).

Why it exists: a few-million-parameter model initialised at random cannot generalise from a dozen
hand-written projects to unseen ones, but it can learn the subagent's core skill, which is the same
on every project: run the right command, read the output, and report the exact failing names,
counts and exit status without inventing any. So every project is new (random module, function
and test names; random numbers of tests; random subsets failing in varied ways; compile errors,
missing files, scripts that print values), while the skill stays the same.

Families (`FAMILIES`), each one kind of project and its command:
    pyunit    Python unittest suite          python3 -m unittest     run_tests
    cmake     C program built with make      make                    build
    jsnode    JavaScript, node's test runner node --test             run_tests
    shcheck   shell script printing values   sh NAME.sh              run_script
    pyscript  Python script printing values  python3 NAME.py         run_script  (held out: transfer)

Splits: `train` holds `train_variants` projects of the training families; `validation` holds
`eval_variants` projects of the same families with seeds and names disjoint from training (a
name's hash decides which side may use it); `test` holds `eval_variants` projects of the held-out
family, which never appears in training: it measures transfer and is reported separately.

Ground truth never comes from the generator's intent: the reference command runs in the real
sandbox and the facts are parsed from what it printed. Each fact carries `evidence`, exact strings
of what the agent sees (the observation message of the reference commands), and the build checks
that every one is there (`check_observable`): a fact the agent cannot see never enters a reward.
The same seed gives byte-identical projects.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from tasks.config import GeneratedConfig
from tasks.groundtruth import (_TAP_COUNT, _TAP_ERROR_NAME, _word, build_facts, count_fact, location_fact,
                              missing_evidence)
from tasks.store import write_corpus
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task



class GeneratedTaskError(ValueError):
    """A generated task whose ground truth is inconsistent (a bug in this generator), named."""


# ---- names ----------------------------------------------------------------------------------------

_SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sel", "dun", "pri", "mo", "ba", "zel", "fin", "gor",
              "lu", "pa", "ne", "sor", "tem", "vi", "qua", "rix", "bo", "nal", "ter", "dra", "ko", "sim")
_VERBS = ("parse", "count", "merge", "scale", "format", "split", "load", "check", "sum", "clip", "pack",
          "rank", "join", "trim", "sort", "find", "build", "score")


def held_out_name(word: str) -> bool:
    """Names are split by hash: a quarter of all words belong to held-out projects only."""
    return hashlib.sha256(word.encode()).digest()[0] % 4 == 0


class Names:
    """Random pronounceable words for one project, all on one side of the train/held-out split."""

    def __init__(self, rng: random.Random, held_out: bool):
        self.rng, self.held_out, self.used = rng, held_out, set()

    def word(self) -> str:
        while True:
            w = "".join(self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(2, 3)))
            if held_out_name(w) == self.held_out and w not in self.used:
                self.used.add(w)
                return w

    def verbs(self, k: int) -> list[str]:
        return self.rng.sample(_VERBS, k)


# ---- families: a draft is the project's files, its command and the request ------------------------

@dataclass
class Draft:
    family: str
    language: str
    category: str
    command: str
    files: dict[str, str]
    request: str
    intent: str                      # what the generator meant (analysis only, never ground truth)
    output_keys: tuple[str, ...] = ()   # script families: the printed "key: value" / "key=value" lines to report


def _pick(rng: random.Random, options: list[str], **kw) -> str:
    return rng.choice(options).format(**kw)


def _pyunit(rng: random.Random, names: Names) -> Draft:
    mod = names.word()
    k = rng.randint(3, 5)
    verbs = names.verbs(k)
    nouns = [names.word() for _ in range(k)]
    funcs, tests = [], []
    kind = rng.choices(["clean", "fail", "load_error"], weights=[2, 6, 1])[0]
    failing = set(rng.sample(range(k), rng.randint(1, min(2, k - 1)))) if kind == "fail" else set()
    how = {i: rng.choice(["assert", "assert", "raise"]) for i in failing}
    for i, (verb, noun) in enumerate(zip(verbs, nouns)):
        fn, a, m = f"{verb}_{noun}", rng.randint(2, 9), rng.randint(2, 5)
        if how.get(i) == "raise":
            exc = rng.choice(["ValueError", "KeyError", "ZeroDivisionError"])
            body = {"ValueError": f"raise ValueError('bad {noun}')", "KeyError": f"return {{}}['{noun}']",
                    "ZeroDivisionError": "return x // 0"}[exc]
        else:
            body = f"return x * {m}"
        funcs.append(f"def {fn}(x):\n    {body}\n")
        expected = a * m + (rng.randint(1, 3) if how.get(i) == "assert" else 0)
        tests.append(f"    def test_{fn}(self):\n        self.assertEqual({fn}({a}), {expected})\n")
    imports = ", ".join(f"{v}_{n}" for v, n in zip(verbs, nouns))
    if kind == "load_error":
        if rng.random() < 0.5:
            imports += f", {rng.choice(_VERBS)}_{names.word()}"          # a name the module lacks
        else:
            funcs[0] = funcs[0].replace("(x):", "(x)", 1)                # a syntax error in the module
    files = {f"{mod}.py": "\n\n".join(funcs),
             f"test_{mod}.py": f"import unittest\n\nfrom {mod} import {imports}\n\n\n"
                               f"class Test{mod.capitalize()}(unittest.TestCase):\n" + "\n".join(tests)}
    request = _pick(rng, ["Run the Python unit tests in this repository and tell me which tests fail.",
                          "Please run the Python tests here and summarize the results.",
                          "Can you run the unittest suite of the {mod} module and report any failures?",
                          "Run `python3 -m unittest` and tell me what fails and why.",
                          "Check whether the Python tests pass; if not, which ones fail and with what error."],
                    mod=mod)
    return Draft("pyunit", "python", "run_tests", "python3 -m unittest", files, request,
                 f"{kind}: failing {sorted(f'test_{verbs[i]}_{nouns[i]}' for i in failing)}")


def _cmake(rng: random.Random, names: Names) -> Draft:
    lib, verb, noun = names.word(), names.verbs(1)[0], names.word()
    fn, var = f"{verb}_{noun}", names.word()
    n = rng.randint(2, 9)
    kind = rng.choice(["clean", "semicolon", "undeclared", "missing_file", "undefined"])
    body = f"int {fn}(int {var})\n{{\n    int total = {var} * {n};\n    return total;\n}}\n"
    if kind == "semicolon":
        body = body.replace(f"* {n};", f"* {n}")
    elif kind == "undeclared":
        body = body.replace("return total;", "return totl;")
    files = {"Makefile": f"CC ?= cc\n\n{lib}: main.o {lib}.o\n\t$(CC) -o {lib} main.o {lib}.o\n\n"
                         f"%.o: %.c {lib}.h\n\t$(CC) -Wall -c $<\n\nclean:\n\trm -f {lib} *.o\n",
             f"{lib}.h": f"int {fn}(int {var});\nint {verb}_twice(int {var});\n",
             "main.c": f'#include <stdio.h>\n#include "{lib}.h"\n\nint main(void)\n{{\n'
                       f'    printf("%d\\n", {fn}({rng.randint(1, 9)}));\n'
                       + (f'    printf("%d\\n", {verb}_twice(2));\n' if kind == "undefined" else "")
                       + "    return 0;\n}\n",
             f"{lib}.c": f'#include "{lib}.h"\n\n{body}'}
    if kind == "missing_file":
        del files[f"{lib}.c"]
    request = _pick(rng, ["Build the C project with make and summarize any compiler errors.",
                          "Run the build (make) and tell me whether it succeeds; if not, which error and where.",
                          "Please compile {lib} and report the first error, with file and line, if any.",
                          "Does the C code build? Run make and report."], lib=lib)
    return Draft("cmake", "c", "build", "make", files, request, kind)


def _jsnode(rng: random.Random, names: Names) -> Draft:
    mod = names.word()
    k = rng.randint(2, 4)
    verbs, nouns = names.verbs(k), [names.word() for _ in range(k)]
    kind = rng.choices(["clean", "fail"], weights=[1, 3])[0]
    failing = set(rng.sample(range(k), rng.randint(1, min(2, k - 1)))) if kind == "fail" else set()
    how = {i: rng.choice(["assert", "assert", "type"]) for i in failing}
    funcs, tests = [], []
    for i, (verb, noun) in enumerate(zip(verbs, nouns)):
        fn, a, m = f"{verb}{noun.capitalize()}", rng.randint(2, 9), rng.randint(2, 5)
        body = "return null.length;" if how.get(i) == "type" else f"return x * {m};"
        funcs.append(f"function {fn}(x) {{\n  {body}\n}}\n")
        expected = a * m + (rng.randint(1, 3) if how.get(i) == "assert" else 0)
        tests.append(f"test('{verb} {noun}', () => {{\n  assert.strictEqual({fn}({a}), {expected});\n}});\n")
    exports = ", ".join(f"{v}{n.capitalize()}" for v, n in zip(verbs, nouns))
    files = {f"{mod}.js": "\n".join(funcs) + f"\nmodule.exports = {{ {exports} }};\n",
             f"{mod}.test.js": "const test = require('node:test');\nconst assert = require('node:assert');\n"
                               f"const {{ {exports} }} = require('./{mod}');\n\n" + "\n".join(tests)}
    request = _pick(rng, ["Run the JavaScript tests with node and tell me which tests fail.",
                          "Please run `node --test` and summarize the results.",
                          "Can you run the node test suite of {mod} and report any failing tests?",
                          "Check whether the JavaScript tests pass; report failures by name."], mod=mod)
    return Draft("jsnode", "javascript", "run_tests", "node --test", files, request,
                 f"{kind}: failing {sorted(f'{verbs[i]} {nouns[i]}' for i in failing)}")


_SCRIPT_REQUESTS = ["Run `{command}` and tell me what it prints or why it fails.",
                    "Please execute `{command}` and report the result.",
                    "What does `{command}` report? Run it and tell me the values or the error."]


def _shcheck(rng: random.Random, names: Names) -> Draft:
    script, data, conf = names.word(), names.word(), names.word()
    rows = rng.randint(3, 12)
    limit = rng.randint(2, 20)
    kind = rng.choice(["clean", "clean", "missing_file", "bad_value"])
    files = {f"{script}.sh": (
        f"#!/bin/sh\nif [ ! -f {data}.txt ]; then\n  echo \"error: {data}.txt not found\"\n  exit 2\nfi\n"
        f"echo \"records=$(wc -l < {data}.txt)\"\nmax_rows=$(cut -d= -f2 {conf}.conf)\n"
        f"case \"$max_rows\" in\n  ''|*[!0-9]*) echo \"error: invalid max_rows '$max_rows' in {conf}.conf\"; exit 3;;\n"
        f"esac\necho \"max_rows=$max_rows\"\n"),
        f"{data}.txt": "".join(f"{names.rng.choice(_SYLLABLES)}{i}\n" for i in range(rows)),
        f"{conf}.conf": f"max_rows={limit if kind != 'bad_value' else names.word()}\n"}
    if kind == "missing_file":
        del files[f"{data}.txt"]
    command = f"sh {script}.sh"
    request = _pick(rng, _SCRIPT_REQUESTS, command=command)
    # `key=value` lines, not `key: value`: the tiny model's copy circuit keys on the two tokens before a
    # value, and `: ` makes them the same for every key (docs/experiments.md, "A teacher that misreads a number")
    return Draft("shcheck", "shell", "run_script", command, files, request, kind, ("records", "max_rows"))


def _pyscript(rng: random.Random, names: Names) -> Draft:
    script, data, key = names.word(), names.word(), names.word()
    values = [rng.randint(1, 50) for _ in range(rng.randint(2, 8))]
    kind = rng.choice(["clean", "clean", "missing_file", "bad_value", "bad_key"])
    lines = [f"{key}={v}" for v in values]
    if kind == "bad_value":
        lines[rng.randrange(len(lines))] = f"{key}={names.word()}"
    files = {f"{script}.py": (
        f"rows = [line.strip().split('=') for line in open('{data}.txt')]\n"
        f"values = {{}}\nfor name, value in rows:\n    values.setdefault(name, []).append(int(value))\n"
        f"items = values['{key if kind != 'bad_key' else names.word()}']\n"
        f"print(f'items: {{len(items)}}')\nprint(f'total: {{sum(items)}}')\n"),
        f"{data}.txt": "\n".join(lines) + "\n"}
    if kind == "missing_file":
        del files[f"{data}.txt"]
    command = f"python3 {script}.py"
    request = _pick(rng, _SCRIPT_REQUESTS, command=command)
    return Draft("pyscript", "python", "run_script", command, files, request, kind, ("items", "total"))


FAMILIES: dict[str, Callable[[random.Random, Names], Draft]] = {
    "pyunit": _pyunit, "cmake": _cmake, "jsnode": _jsnode, "shcheck": _shcheck, "pyscript": _pyscript}


def draft(family: str, seed: str, held_out: bool) -> Draft:
    """One project of `family`, a pure function of (family, seed, side of the name split)."""
    if family not in FAMILIES:
        raise GeneratedTaskError(f"unknown generated family {family!r}; use one of {', '.join(FAMILIES)}")
    rng = random.Random(hashlib.sha256(f"{family}:{seed}".encode()).digest())
    return FAMILIES[family](rng, Names(rng, held_out))


# ---- ground truth from the output -------------------------------------------------------------------

_PY_FAILURE = re.compile(r"^(FAIL|ERROR): (\w+) \(", re.MULTILINE)
_PY_RAN = re.compile(r"^Ran (\d+) tests?", re.MULTILINE)
_PY_VERDICT = re.compile(r"^(FAILED \([\w=, ]+\)|OK)$", re.MULTILINE)
_EXC_LINE = re.compile(r"^(\w+(?:Error|Exception))\b(.*)$", re.MULTILINE)
_PY_FRAME = re.compile(r'File "(?:/work/repo/)?([^"/]+)", line (\d+)')
_TAP_FAIL = re.compile(r"^not ok \d+ - (.+)$", re.MULTILINE)


def _exception(block: str) -> tuple[str, str]:
    found = _EXC_LINE.findall(block)
    return (found[-1][0], found[-1][1].strip(": ").strip()) if found else ("error", "")


def traceback_facts(output: str) -> list[Fact]:
    """A Python traceback's last exception and its innermost frame in the repository."""
    etype, msg = _exception(output)
    facts = [Fact("error_message", f"{etype}: {msg}".strip(": "), [_word(etype)], [etype])]
    if frames := _PY_FRAME.findall(output):
        loc = location_fact(*frames[-1], style="line")
        loc.evidence = [f'File "/work/repo/{frames[-1][0]}", line {frames[-1][1]}']
        facts.append(loc)
    return facts


def pyunit_facts(output: str) -> list[Fact]:
    ran = _PY_RAN.search(output)
    total = int(ran.group(1)) if ran else 0
    failures = _PY_FAILURE.findall(output)
    facts = []
    load_error = [name for kind, name in failures if not name.startswith("test_")]   # _FailedTest: the module
    if load_error:
        return traceback_facts(output)
    for kind, name in failures:
        block = output.split(f"{kind}: {name} (", 1)[1].split("\n======", 1)[0]
        etype, _ = _exception(block)
        # in the words of the runner's own line, as a subagent quotes it: a reader finds it in the log
        facts.append(Fact("failing_test", f"{kind}: {name} ({etype})", [_word(name), _word(etype)],
                           [f"{kind}: {name}", etype]))
    ran_line = ran.group(0) if ran else "Ran 0 tests"   # as printed: 'Ran 1 test', 'Ran 4 tests'
    verdict = _PY_VERDICT.search(output)
    c = count_fact(len(failures), total, quoted=(ran_line, verdict.group(0)) if verdict else ())
    c.evidence = [ran_line] + ([verdict.group(0)] if verdict else [])
    return facts + [c]


def jsnode_facts(output: str) -> list[Fact]:
    failing = [(m.group(0), m.group(1).strip()) for m in _TAP_FAIL.finditer(output)]
    counts = {k: int(v) for k, v in _TAP_COUNT.findall(output)}
    errors = _TAP_ERROR_NAME.findall(output)
    facts = []
    for i, (line, name) in enumerate(failing):
        etype = errors[i] if i < len(errors) else "error"
        facts.append(Fact("failing_test", f"{line} ({etype})", [re.escape(name), _word(etype)],
                           [line, f"name: '{etype}'"]))
    failed, total = counts.get("fail", 0), counts.get("tests", 0)
    quoted = (f"# tests {total}", f"# fail {failed}" if failed else f"# pass {counts.get('pass', 0)}")
    c = count_fact(failed, total, quoted=quoted)
    c.evidence = list(quoted)
    return facts + [c]


def cmake_facts(output: str) -> list[Fact]:
    # no error parsed: a success, which only the exit code can back (an unparsed failure fails the check)
    return build_facts(output) or [Fact("outcome", "the build succeeds",
                                        [r"succe|without errors?|no errors?|builds? (fine|cleanly)"],
                                        ["<exit_code>0</exit_code>"])]


def script_facts(output: str, keys: tuple[str, ...]) -> list[Fact]:
    facts = []
    for key in keys:
        if m := re.search(rf"^{key}(?:: |=)(\S+)$", output, re.MULTILINE):
            value = rf"{re.escape(m.group(1))}(?!\w|\.\d)"   # the value whole: 11 is not 110 or 11.5
            facts.append(Fact("output", m.group(0), [rf"\b{key}\W{{1,3}}{value}"], [m.group(0)],
                              contradictions=[rf"\b{key}\W{{1,3}}(?!{value})\w[\w.-]*"]))
    if m := re.search(r"^error: (.+)$", output, re.MULTILINE):
        facts.append(Fact("error_message", m.group(0), [re.escape(m.group(1)[:40])], [m.group(0)]))
    if "Traceback" in output:
        facts += traceback_facts(output)
    return facts


def facts_from_output(d: Draft, output: str, exit_code: int) -> list[Fact]:
    """Every fact of a task, parsed from what its reference command printed, plus its exit status."""
    if d.family == "pyunit":
        facts = pyunit_facts(output)
    elif d.family == "jsnode":
        facts = jsnode_facts(output)
    elif d.family == "cmake":
        facts = cmake_facts(output)
    else:
        facts = script_facts(output, d.output_keys)
    return facts + [Fact("exit_status", f"exit status {exit_code}", [rf"\bexit\b\D{{0,20}}\b{exit_code}\b"],
                          [f"<exit_code>{exit_code}</exit_code>"])]


def check_observable(task: Task, visible: str) -> None:
    """Every fact's evidence must be in what the agent sees (the reference commands' observations),
    and every fact must be stated by the reference report: otherwise the task is inconsistent."""
    for f in task.ground_truth.facts:
        if missing := missing_evidence(f, visible):
            raise GeneratedTaskError(f"task {task.id}: fact {f.value!r} is not observable: evidence {missing} "
                                     f"is not in the output of {task.reference.commands}")
        for p in f.patterns:
            if not re.search(p, task.reference.report, re.IGNORECASE | re.MULTILINE):
                raise GeneratedTaskError(f"task {task.id}: the reference report does not state {f.value!r} ({p!r})")


# ---- building the corpus ------------------------------------------------------------------------------

def reference_report(command: str, code: int, facts: list[Fact]) -> tuple[str, str]:
    """(status, the ideal report): short, every fact stated in the words of its value, nothing pasted."""
    order = ("error_message", "failing_test", "error_location", "output", "counts", "outcome")   # the answer first
    main = [f.value for f in sorted(facts, key=lambda f: order.index(f.kind) if f.kind in order else len(order))
            if f.kind != "exit_status"]
    status = "success" if code == 0 else ("failure" if any(f.kind == "failing_test" for f in facts) else "error")
    outcome = f"`{command}` succeeds" if code == 0 else f"`{command}` fails (exit {code})"
    summary = outcome + (f": {main[0]}." if main else ".")
    rest = main[1:]   # the summary already states the first fact
    details = "; ".join(rest) + (". " if rest else "") + f"Exit status {code}."
    return status, f"<report><status>{status}</status><summary>{summary}</summary><details>{details}</details></report>"


@dataclass(frozen=True)
class Spec:
    """One task to build: which family, which seed, which split."""
    family: str
    index: int
    split: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.family}-{self.split}-{self.index:04d}"

    def draft(self) -> Draft:
        return draft(self.family, f"{self.seed}:{self.split}:{self.index}", held_out=self.split != "train")


def specs(cfg: GeneratedConfig) -> list[Spec]:
    """train: cfg.train_variants over the training families (round robin); validation: cfg.eval_variants
    of the same families, other seeds and names; test: cfg.eval_variants of the held-out family."""
    bad = [f for f in [*cfg.families, cfg.held_out_family] if f not in FAMILIES]
    if bad or not cfg.families:
        raise GeneratedTaskError(f"tasks.generated: unknown or no families {bad or cfg.families}; "
                                 f"use some of {', '.join(FAMILIES)}")
    if cfg.held_out_family in cfg.families:
        raise GeneratedTaskError(f"tasks.generated.held_out_family={cfg.held_out_family!r} is also in "
                                 "tasks.generated.families: a held-out family must never appear in training")
    fams = list(cfg.families)
    out = [Spec(fams[i % len(fams)], i, "train", cfg.seed) for i in range(cfg.train_variants)]
    out += [Spec(fams[i % len(fams)], i, "validation", cfg.seed) for i in range(cfg.eval_variants)]
    out += [Spec(cfg.held_out_family, i, "test", cfg.seed) for i in range(cfg.eval_variants)]
    return out


def write_project(d: Draft, repo: Path) -> None:
    repo.mkdir(parents=True)
    for name, text in d.files.items():
        (repo / name).write_text(text)


async def build_task(spec: Spec, out: Path, sandbox_cfg, cap: int) -> Task:
    """Write the project, run its reference command in a real sandbox, and derive the ground truth."""
    from core.protocol import Observation, format_observation
    from sandbox import open_sandbox

    d = spec.draft()
    repo = out / "repos" / spec.id
    write_project(d, repo)
    async with await open_sandbox(sandbox_cfg, str(repo)) as sb:
        r = await sb.run(d.command, timeout_s=60)
    if r.timed_out or len(r.output.encode()) > cap:
        raise GeneratedTaskError(f"task {spec.id}: `{d.command}` printed {len(r.output.encode())} bytes "
                                 f"(cap {cap}) or timed out: generated tasks must fit the observation cap")
    facts = facts_from_output(d, r.output, r.exit_code)
    status, report = reference_report(d.command, r.exit_code, facts)
    task = Task(id=spec.id, language=d.language, category=d.category, project=f"generated-{d.family}",
                repo_dir=f"repos/{spec.id}", request=d.request, split=spec.split,
                ground_truth=GroundTruth(exit_status=r.exit_code, facts=facts,
                                         observed={"outputs": [r.output], "exit_codes": [r.exit_code],
                                                   "family": d.family, "intent": d.intent, "status": status}),
                reference=ReferenceSolution(commands=[d.command], report=report))
    check_observable(task, format_observation(Observation(r.exit_code, r.output), turns_left=1))
    return task


def corpus_key(cfg: GeneratedConfig) -> str:
    """Content hash of everything a generated corpus depends on: the config and this builder's sources."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for p in (Path(__file__), Path(__file__).with_name("groundtruth.py"), Path(__file__).with_name("types.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


async def build_generated(out: Path, cfg: GeneratedConfig, sandbox_cfg, concurrency: int = 4,
                          progress: Callable[[int, int], None] | None = None) -> list[Task]:
    """Build every task of the generated corpus into `out` (repos/ + one JSONL per split)."""

    (out / "repos").mkdir(parents=True, exist_ok=True)
    limit, todo, done = asyncio.Semaphore(concurrency), specs(cfg), []

    async def one(s: Spec) -> Task:
        async with limit:
            t = await build_task(s, out, sandbox_cfg, cfg.observation_cap)
        done.append(s)
        if progress:
            progress(len(done), len(todo))
        return t

    tasks = list(await asyncio.gather(*[one(s) for s in todo]))
    write_corpus(out, tasks, source=f"generated {corpus_key(cfg)}: {json.dumps(asdict(cfg), sort_keys=True)}")
    return tasks
