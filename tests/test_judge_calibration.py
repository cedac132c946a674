"""Judge calibration: agreement metrics against hand-computed values, the shipped set (real runs of
every built-in task) ranked correctly by the rules judge through `terminus judge calibrate`, and the
generator replaying a task's reference faithfully and corrupted in real sandboxes."""
from __future__ import annotations

import json

import pytest

from judge.calibrate import (DEFAULT_SET, VARIANTS, CalibrationError, make_calibration, pairwise_accuracy, read_set,
                             spearman)
from judge.rules import judge_rules
from terminus.cli import main

pytestmark = pytest.mark.timeout(180)


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks a = 1,2,3 ; b = 1,3,2 -> d^2 = 0+1+1 -> 1 - 6*2/(3*8) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # ties share the mean rank: b ranks (1.5, 1.5, 3) against (1, 2, 3): Pearson = 0.866
    assert spearman([1, 2, 3], [5, 5, 9]) == pytest.approx(0.8660254, abs=1e-6)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_pairwise_accuracy_within_groups_and_ties():
    groups = ["a", "a", "a", "b", "b"]
    labels = [1, 0, 0, 1, 0]
    scores = [0.9, 0.2, 0.9, 0.1, 0.5]   # a: one right, one tie (0.5); b: wrong
    acc, pairs = pairwise_accuracy(groups, labels, scores)
    assert pairs == 3 and acc == pytest.approx(1.5 / 3)


def test_shipped_set_covers_every_variant_of_real_runs():
    ex = read_set(DEFAULT_SET)
    by_task: dict[str, set[str]] = {}
    for e in ex:
        by_task.setdefault(e.task.id, set()).add(e.variant)
        assert e.trajectory.error is None and e.trajectory.finish_reason == "report"
        assert any(t.action == "command" and t.exit_code is not None for t in e.trajectory.turns)
    assert len(by_task) >= 20 and all(v == set(VARIANTS) for v in by_task.values())


def test_calibrate_command_rules_ranks_faithful_first(capsys):
    assert main(["judge", "calibrate", "-c", "tiny_cpu"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["unjudgeable"] == 0 and rep["judged"] == rep["examples"]
    assert rep["pairwise_accuracy"] == 1.0, rep["faithful_wins"]
    assert rep["spearman"] > 0.5
    assert rep["self_consistency"]["identical_fraction"] == 1.0   # the rules judge is deterministic
    means = rep["mean_reward_by_variant"]
    assert all(means["faithful"] > means[v] for v in VARIANTS[1:])


def test_calibrate_names_a_missing_or_broken_set(tmp_path, capsys):
    assert main(["judge", "calibrate", "-c", "tiny_cpu", "--set", str(tmp_path / "nope.jsonl")]) == 2
    assert "make-calibration" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"variant": "faithful"}\n')
    with pytest.raises(CalibrationError, match="bad.jsonl:1"):
        read_set(bad)


def test_generator_replays_reference_and_corruptions_in_sandbox(tok):
    from tasks import load_tasks
    from terminus.config import load_config

    cfg = load_config("tiny_cpu")
    task = next(t for t in load_tasks("builtin", "test") if t.ground_truth.exit_status not in (0, None))
    ex = {e.variant: e for e in make_calibration([task], tok, cfg.rollout)}
    assert set(ex) == set(VARIANTS)
    faithful = ex["faithful"].trajectory
    assert [t.command for t in faithful.turns if t.action == "command"] == task.reference.commands
    assert faithful.turns[0].exit_code == task.ground_truth.exit_status   # it really ran
    edit = ex["out_of_scope_edit"].trajectory
    assert edit.turns[0].command.startswith("sed -i") and edit.turns[0].exit_code == 0
    assert "test_cache_eviction_order" in ex["hallucinated_test"].trajectory.report["summary"]
    verdicts = {v: judge_rules(task, e.trajectory) for v, e in ex.items()}
    assert verdicts["out_of_scope_edit"].failures["out_of_scope"].flag
    assert verdicts["hallucinated_test"].failures["hallucination"].flag
    assert not any(f.flag for f in verdicts["faithful"].failures.values())
