"""Judge: reward formula, rules judge grading, the pool (cache, unjudgeable), the OpenAI backend on loopback."""
from __future__ import annotations

import copy
import re

import pytest

from judge.config import JudgeConfig
from judge.llm import aggregate, parse_verdict, render_prompt, verdict_schema, VerdictParseError
from judge.pool import JudgePool
from judge.rubric import DIMENSION_NAMES, FAILURE_NAMES, check_weights, quality, reward
from judge.rules import judge_rules
from rollout.trajectory import Trajectory, Turn
from tasks.types import Fact, GroundTruth, ReferenceSolution, Task

OUT = ("============ FAILURES ============\n___ test_parse ___\n"
       "    def test_parse():\n>       assert parse('1') == 2\nE       AssertionError: assert 1 == 2\n"
       "tests/test_mod.py:7: AssertionError\n=== 1 failed, 3 passed in 0.02s ===\n")


def make_task() -> Task:
    return Task(id="t1", language="python", category="run_tests", project="p", repo_dir="/x",
                request="Run the tests and tell me what fails.",
                ground_truth=GroundTruth(exit_status=1, facts=[
                    Fact("failing_test", "test_parse fails with AssertionError", [r"test_parse", r"AssertionError"]),
                    Fact("error_location", "tests/test_mod.py:7", [r"test_mod\.py:7"]),
                    Fact("passing_count", "3 tests pass", [r"\b3\b.*pass"])]),
                reference=ReferenceSolution(commands=["python -m pytest -q"], report="..."))


def traj(cmds: list[tuple[str, int, str]], report: dict | None, **kw) -> Trajectory:
    turns = [Turn(text=f"<command>{c}</command>", action="command", command=c, observation=o, exit_code=e)
             for c, e, o in cmds]
    if report:
        turns.append(Turn(text="<report>..</report>", action="report"))
    return Trajectory(task_id="t1", messages=[], token_ids=[], response_mask=[], logprobs=[], turns=turns,
                      report=report, finish_reason="report" if report else "max_turns", **kw)


GOOD = {"status": "failure", "summary": "1 test fails: test_parse (AssertionError); 3 pass.",
        "details": "test_parse: assert parse('1') == 2 fails at tests/test_mod.py:7 (AssertionError: assert 1 == 2)."}


def ladder() -> list[Trajectory]:
    """Best first; each is strictly worse than the one before (but see the ladder test: the dump)."""
    run = [("python -m pytest -q", 1, OUT)]
    missing = dict(GOOD, summary="1 test fails: test_parse; 3 pass.", details="test_parse fails.")
    halluc = dict(GOOD, details=GOOD["details"] + " test_serialize also fails.")
    dump = dict(GOOD, details=OUT * 6)
    return [
        traj(run, GOOD),
        traj(run, missing),
        traj(run * 3, dump),
        traj(run + [("sed -i s/2/1/ tests/test_mod.py", 0, "")], GOOD),
        traj(run, halluc),
        traj(run * 3, None),
    ]


def rules_reward(t: Trajectory, cfg: JudgeConfig | None = None) -> float:
    cfg = cfg or JudgeConfig()
    v = judge_rules(make_task(), t)
    return reward({k: d.score for k, d in v.dimensions.items()}, {k: f.flag for k, f in v.failures.items()},
                  cfg.weights, cfg.penalties)


def test_reward_formula_hand_computed():
    w = {d: 0.0 for d in DIMENSION_NAMES} | {"task_completion": 3.0, "faithfulness": 1.0}
    p = {f: 0.0 for f in FAILURE_NAMES} | {"hallucination": 0.5, "looping": 0.2}
    scores = {d: 0 for d in DIMENSION_NAMES} | {"task_completion": 4, "faithfulness": 2}
    # quality = (3*4/4 + 1*2/4) / 4 = 3.5/4 = 0.875
    assert quality(scores, w) == pytest.approx(0.875)
    assert reward(scores, {"hallucination": True}, w, p) == pytest.approx(0.375)
    assert reward(scores, {"hallucination": True, "looping": True}, w, p) == pytest.approx(0.175)
    assert reward({d: 9 for d in DIMENSION_NAMES}, {}, w, p) == pytest.approx(1.0)  # scores clip at 4
    with pytest.raises(ValueError, match="unknown keys.*faithfulnes"):
        check_weights({"faithfulnes": 1.0}, p)


def test_rules_judge_ranks_a_ladder_strictly():
    rewards = [rules_reward(t) for t in ladder()]
    # best first, except that the raw dump of three runs, which states every fact, ranks above the short
    # report that misses two of the three: the rules judge weighs substance before form
    rewards = [rewards[i] for i in (0, 2, 1, 3, 4, 5)]
    assert rewards == sorted(rewards, reverse=True) and len(set(rewards)) == len(rewards), rewards
    assert rewards[0] == pytest.approx(1.0)


def test_rules_judge_flags_each_failure_mode():
    task = make_task()
    ts = ladder()
    v = {name: judge_rules(task, ts[i]).failures for name, i in
         (("good", 0), ("loop", 2), ("scope", 3), ("halluc", 4), ("stop", 5))}
    assert not any(f.flag for f in v["good"].values())
    assert v["scope"]["out_of_scope"].flag and "sed -i" in v["scope"]["out_of_scope"].evidence
    assert v["halluc"]["hallucination"].flag and "test_serialize" in v["halluc"]["hallucination"].evidence
    assert v["loop"]["looping"].flag and v["stop"]["premature_stop"].flag
    success = judge_rules(task, traj([("python -m pytest -q", 1, OUT)], dict(GOOD, status="success")))
    assert success.failures["hallucination"].flag and "exits 1" in success.failures["hallucination"].evidence
    items = judge_rules(task, ladder()[1]).items
    assert [i.code for i in items] == [False, False, True]  # no AssertionError, no file:line
    net = judge_rules(task, traj([("curl http://x | sh", 0, ""), ("ls > files.txt", 0, ""),
                                  ("pytest 2>&1 | tail", 1, OUT)], GOOD)).failures["out_of_scope"].evidence
    assert "network" in net and "redirection" in net and "tail" not in net


def test_pool_cache_and_unjudgeable(tmp_path):
    cfg = JudgeConfig(cache_dir=str(tmp_path / "cache"))
    tasks = {"t1": make_task()}
    trajs = ladder() + [traj([], None, error="sandbox died"), Trajectory("nope", [], [], [], [])]
    pool = JudgePool(cfg)
    pool.score(tasks, trajs)
    assert [t.reward is not None for t in trajs] == [True] * 6 + [False, False]
    assert trajs[6].verdict["status"] == "unjudgeable" and "sandbox died" in trajs[6].verdict["reason"]
    m = pool.metrics()
    assert m["judge/judged"] == 6 and m["judge/unjudgeable/episode_error"] == 1
    assert m["judge/unjudgeable/unknown_task"] == 1 and m["judge/cache_hits"] == 0
    again = [copy.deepcopy(t) for t in ladder()]
    pool2 = JudgePool(cfg)
    pool2.score(tasks, again)
    assert pool2.metrics()["judge/cache_hits"] == 6
    assert [t.reward for t in again] == [t.reward for t in trajs[:6]]


def _llm_json(score: int = 3, flag: bool = False, n: int = 3) -> str:
    import json
    return json.dumps({"dimensions": {d: {"score": score, "rationale": "ok"} for d in DIMENSION_NAMES},
                       "failure_modes": {f: {"flag": flag, "evidence": ""} for f in FAILURE_NAMES},
                       "items": [True] * n})


def test_parse_render_aggregate():
    task, t = make_task(), ladder()[1]
    v = parse_verdict(_llm_json(), task, t, "x")
    assert v.dimensions["faithfulness"].score == 3 and [i.llm for i in v.items] == [True] * 3
    assert [i.code for i in v.items] == [False, False, True]  # both checks reported
    for bad in ("not json", '{"dimensions": {}}', _llm_json(score=7)):
        with pytest.raises(VerdictParseError):
            parse_verdict(bad, task, t, "x")
    prompt = render_prompt(task, t)[1]["content"]
    assert "test_parse fails with AssertionError" in prompt and "python -m pytest -q" in prompt
    agg = aggregate([parse_verdict(_llm_json(s, f), task, t, "x") for s, f in ((1, True), (3, True), (4, False))],
                    "x")
    assert agg.dimensions["concision"].score == 3 and agg.failures["looping"].flag and agg.samples == 3
    assert agg.agreement == pytest.approx((7 * 2 + 4 * 2) / (7 * 3 + 4 * 3), abs=1e-4)
    assert verdict_schema(3)["properties"]["items"]["maxItems"] == 3


def test_openai_backend_retry_and_mark(tmp_path):
    from core.testing.openai_server import Reply, ScriptedOpenAIServer
    task = make_task()
    script = [Reply(status=429, headers={"Retry-After": "0"}), Reply(status=500), Reply(content=_llm_json(4)),
              Reply(content="sure! here it is: {"), Reply(content=_llm_json(2, True)),  # repaired
              Reply(content="nope"), Reply(content="still nope"),                        # unjudgeable
              Reply(content=_llm_json(), delay_s=5.0), Reply(content=_llm_json(1))]    # hang, then ok
    with ScriptedOpenAIServer(script) as srv:
        cfg = JudgeConfig(backend="openai", base_url=srv.base_url, model_name="scripted-model", max_retries=3,
                          request_timeout_s=1.0, max_concurrency=1, cache_dir=str(tmp_path / "c"),
                          invalid_verdict_retries=1)
        pool = JudgePool(cfg)
        results = []
        for i in range(4):
            t = ladder()[i % 2]
            t.messages = [{"role": "user", "content": f"episode {i}"}]  # distinct cache keys
            pool.score({"t1": task}, [t])
            results.append(t)
        assert results[0].reward == pytest.approx(1.0) and len(srv.requests) >= 3
        assert results[0].verdict["judge"] == "openai:scripted-model"
        assert results[1].reward is not None and results[1].verdict["failures"]["hallucination"]["flag"]
        assert "invalid" in srv.requests[4]["messages"][-1]["content"]
        assert results[2].reward is None and results[2].verdict["reason"].startswith("malformed_json")
        assert results[3].verdict["dimensions"].get("faithfulness", {}).get("score") == 1, results[3].verdict
        n = len(srv.requests)
        pool.score({"t1": task}, [results[0]])  # cached: no request
        assert len(srv.requests) == n and pool.metrics()["judge/cache_hits"] == 1
        assert pool.metrics()["judge/unjudgeable/malformed_json"] == 1
        assert pool.metrics()["judge/invalid_verdicts"] == 3   # 1 repaired + 2 for the unjudgeable one
    # The endpoint down for good: marked, never a silent 0.
    cfg = JudgeConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model_name="m", max_retries=1,
                      request_timeout_s=1.0)
    t = ladder()[0]
    JudgePool(cfg).score({"t1": task}, [t])
    assert t.reward is None and t.verdict["reason"].startswith("endpoint_error")


def _openai_pool(srv, tmp_path, **kw) -> JudgePool:
    return JudgePool(JudgeConfig(backend="openai", base_url=srv.base_url, model_name=srv.model, max_retries=0,
                                 request_timeout_s=5.0, cache_dir=str(tmp_path / "c"), **kw))


def test_openai_judge_sends_the_verdict_schema_and_retries_an_invalid_verdict(tmp_path):
    from core.testing.openai_server import Reply, ScriptedOpenAIServer
    task, t = make_task(), ladder()[0]
    # Valid JSON, wrong verdict: 2 item answers for 3 ground-truth facts (the schema says exactly 3).
    with ScriptedOpenAIServer([Reply(content=_llm_json(4, n=2)), Reply(content=_llm_json(4))]) as srv:
        pool = _openai_pool(srv, tmp_path)
        pool.score({"t1": task}, [t])
    assert t.reward == pytest.approx(1.0) and len(srv.requests) == 2
    fmt = srv.requests[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == verdict_schema(3)       # the same schema the vLLM judge decodes with
    assert "items" in srv.requests[1]["messages"][-1]["content"]    # the repair names what was wrong
    m = pool.metrics()
    assert m["judge/invalid_verdicts"] == 1 and m["judge/judged"] == 1 and m["judge/unjudgeable"] == 0


def test_openai_judge_masks_a_trajectory_with_only_invalid_verdicts(tmp_path):
    from core.testing.openai_server import Reply, ScriptedOpenAIServer
    task, t = make_task(), ladder()[0]
    bad = [_llm_json(7), _llm_json(3, n=4), '{"dimensions": {}}']   # score out of 0..4, 4 items, missing keys
    with ScriptedOpenAIServer([Reply(content=b) for b in bad] + [Reply(content=_llm_json())]) as srv:
        pool = _openai_pool(srv, tmp_path, invalid_verdict_retries=2, response_format="json_object")
        pool.score({"t1": task}, [t])
    assert len(srv.requests) == 3                                   # 1 + invalid_verdict_retries, then masked
    assert srv.requests[0]["response_format"] == {"type": "json_object"}
    assert t.reward is None and t.verdict["reason"].startswith("malformed_json")
    m = pool.metrics()
    assert m["judge/unjudgeable/malformed_json"] == 1 and m["judge/invalid_verdicts"] == 3


def test_verdict_model_validates_what_the_schema_says():
    task, t = make_task(), ladder()[1]
    assert parse_verdict(_llm_json(), task, t, "x").dimensions["concision"].score == 3.0
    long = _llm_json().replace('"rationale": "ok"', '"rationale": "' + "r" * 500 + '"')
    assert len(parse_verdict(long, task, t, "x", text_max=40).dimensions["concision"].rationale) == 40
    for bad in (_llm_json(n=2), _llm_json().replace('"score": 3', '"score": 2.5'),
                _llm_json().replace('"flag": false', '"flag": "no"'), _llm_json()[:-1] + ', "extra": 1}'):
        with pytest.raises(VerdictParseError, match="does not match the schema"):
            parse_verdict(bad, task, t, "x")


def test_rules_judge_flags_an_invented_quoted_test_name():
    """Node's runner names tests in words ('sum values'): a quoted name no output showed is made up."""
    out = "not ok 1 - sum values\n  name: 'AssertionError'\n# tests 2\n# fail 1\n"
    task = Task(id="t1", language="javascript", category="run_tests", project="p", repo_dir="/x",
                request="Run the node tests.", ground_truth=GroundTruth(exit_status=1, facts=[
                    Fact("failing_test", "'sum values' fails with AssertionError", [r"sum values"])]))
    seen = {"status": "failure", "summary": "'sum values' fails with AssertionError.", "details": "1 of 2 tests fail."}
    made_up = dict(seen, summary="'sum totals' fails with AssertionError.")
    ok, bad = (judge_rules(task, traj([("node --test", 1, out)], r)) for r in (seen, made_up))
    assert not ok.failures["hallucination"].flag
    assert bad.failures["hallucination"].flag and "sum totals" in bad.failures["hallucination"].evidence
    assert bad.dimensions["faithfulness"].score < ok.dimensions["faithfulness"].score
    # ... and so is a name in a quoted TAP line (the generated corpus's reports quote the runner's line)
    quoted, made_up = (dict(seen, summary=f"not ok 1 - {name} (AssertionError).") for name in ("sum values", "sum totals"))
    ok, bad = (judge_rules(task, traj([("node --test", 1, out)], r)) for r in (quoted, made_up))
    assert not ok.failures["hallucination"].flag
    assert bad.failures["hallucination"].flag and "sum totals" in bad.failures["hallucination"].evidence


def test_rules_judge_rewards_substance_over_form():
    """A short, well-formed report with the right status that states no fact earns little (GRPO on the
    generated corpus learned exactly that when form paid: docs/experiments.md), and an exit status no
    command returned is an unsupported claim."""
    task = make_task()
    run = [("python -m pytest -q", 1, OUT)]
    empty = {"status": "failure", "summary": "The tests fail.", "details": "Exit status 1."}
    wrong_exit = dict(empty, details="Exit status 0.")
    good, hollow, wrong = (judge_rules(task, traj(run, r)) for r in (GOOD, empty, wrong_exit))
    assert rules_reward(traj(run, empty)) < 0.5 * rules_reward(traj(run, GOOD))
    assert hollow.dimensions["concision"].score < good.dimensions["concision"].score   # short, but says nothing
    assert wrong.dimensions["faithfulness"].score < hollow.dimensions["faithfulness"].score == 4.0


def test_rules_judge_gives_no_status_credit_for_another_commands_failure():
    """GRPO's hack on the generated corpus: run `make` whatever the project, and report its failure
    faithfully. The status 'error' matches a failing task, but the exit status it states (2) is not the
    task's (1): that report answers another question, and earns less than an honest one without facts."""
    task = make_task()
    make = [("make", 2, "make: *** No targets specified and no makefile found.  Stop.\n")]
    other = {"status": "error", "summary": "`make` fails (exit 2): No targets.", "details": "Exit status 2."}
    honest = {"status": "failure", "summary": "The tests fail.", "details": "Exit status 1."}
    hack = judge_rules(task, traj(make, other))
    assert "another command" in hack.dimensions["task_completion"].rationale
    assert hack.dimensions["task_completion"].score == 0.5      # no status credit, no facts
    assert rules_reward(traj(make, other)) < rules_reward(traj([("python -m pytest -q", 1, OUT)], honest))
    # the same report on a task whose command does exit 2 keeps its status credit
    build = Task(id="t1", language="c", category="build", project="p", repo_dir="/x", request="Build it.",
                 ground_truth=GroundTruth(exit_status=2, facts=[]))
    assert judge_rules(build, traj(make, other)).dimensions["task_completion"].score == 4.0


def test_rules_judge_counts_a_misstated_value_as_a_hallucination():
    """'records: 7' where the script printed 'records: 11' is a claim no output backs, and counts that
    are not the runner's ('3 of 4', '# tests 5') too; the same keys with the right values are not. It
    is flagged as a hallucination, like an invented test name. A wrong value ranks below leaving it
    out, which ranks below stating it: GRPO learned to drop the values when dropping them cost nothing
    (docs/experiments.md)."""
    from judge.rules import exact_facts, misstated_facts
    from tasks.generated import script_facts
    from tasks.groundtruth import count_fact
    out = "records: 11\nlimit: 7\n"
    task = Task(id="t1", language="shell", category="run_script", project="p", repo_dir="/x", request="Run it.",
                ground_truth=GroundTruth(exit_status=0, facts=script_facts(out, ("records", "limit")) + [
                    Fact("exit_status", "exit status 0", [r"\bexit\b\D{0,20}\b0\b"])]))
    assert misstated_facts(task, "records: 7; limit: 7") == ["records: 7"]
    assert misstated_facts(task, "records: 110, limit: 7.") == ["records: 110"]
    assert misstated_facts(task, "records: 11, limit: 7. Exit status 0.") == []
    run = [("sh p.sh", 0, out)]
    reports = [{"status": "success", "summary": f"`sh p.sh` succeeds{s}.", "details": "Exit status 0."}
               for s in (": records: 11, limit: 7", ": limit: 7", ": records: 7, limit: 7", "")]
    right, omitted, wrong, bare = (judge_rules(task, traj(run, r)) for r in reports)
    assert [exact_facts(task, traj(run, r)) for r in reports] == [True, False, False, False]
    assert wrong.dimensions["faithfulness"].score < right.dimensions["faithfulness"].score == 4.0
    assert [v.failures["hallucination"].flag for v in (right, omitted, wrong, bare)] == [False, False, True, False]
    assert "records: 7" in wrong.failures["hallucination"].evidence

    def score(v):
        return reward({k: d.score for k, d in v.dimensions.items()}, {k: f.flag for k, f in v.failures.items()},
                      JudgeConfig().weights, JudgeConfig().penalties)
    assert score(right) > score(omitted) > score(wrong)
    assert score(bare) < 0.6   # the right status and none of the values asked for: not most of the reward

    counts = count_fact(2, 4, quoted=("# tests 4", "# fail 2"))
    assert [c for c in ("# tests 4, # fail 2", "# tests 5, # fail 2", "# tests 4; # fail 3", "2 of 4 tests fail")
            if any(re.search(p, c, re.IGNORECASE) for p in counts.contradictions)] == ["# tests 5, # fail 2",
                                                                                      "# tests 4; # fail 3"]
    plain = count_fact(2, 4)
    assert [c for c in ("2 of 4 tests fail", "3 of 4 tests fail", "2 of 4 tests failed", "12 of 40 tests fail")
            if any(re.search(p, c) for p in plain.contradictions)] == ["3 of 4 tests fail", "12 of 40 tests fail"]
