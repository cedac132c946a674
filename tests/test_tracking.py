"""Run tracking without W&B: metrics.jsonl and the sample table's samples.jsonl."""
import json

from rollout.trajectory import Trajectory, Turn
from terminus.config import load_config
from core.tracking import SAMPLE_COLUMNS, Tracker, sample_rows


def traj(task_id, reward, report=None, error=None, verdict=None):
    turns = [Turn(text="<command>make</command>", action="command", command="make"),
             Turn(text="oops", action="format_error", format_error="no block")]
    return Trajectory(task_id=task_id, messages=[], token_ids=[], response_mask=[], logprobs=[], turns=turns,
                      report=report, finish_reason="report" if report else "max_turns", reward=reward, error=error,
                      verdict=verdict)


def test_sample_rows_one_per_task_with_commands_and_report():
    report = {"status": "failure", "summary": "build fails", "details": "greet.c:8: error"}
    rows = sample_rows([traj("a", 0.5, report, verdict={"judge": "openai:big", "status": "ok", "reason": ""}),
                        traj("a", 0.1),
                        traj("b", None, error="engine: down",
                             verdict={"judge": "openai:big", "status": "unjudgeable", "reason": "episode_error: x"}),
                        traj("c", 1.0)], k=2)
    assert [dict(zip(SAMPLE_COLUMNS, r))["task_id"] for r in rows] == ["a", "b"]
    a, b = (dict(zip(SAMPLE_COLUMNS, r)) for r in rows)
    assert a["reward"] == 0.5 and a["turns"] == 2 and a["commands"] == "make ; <format_error>"
    assert a["report"] == "[failure] build fails | greet.c:8: error"
    assert b["report"] == "" and b["error"] == "engine: down" and b["finish_reason"] == "max_turns"
    # which judge gave the reward, and why there is none
    assert a["verdict"] == "openai:big" and b["verdict"] == "openai:big: episode_error: x"


def test_tracker_writes_metrics_and_samples_without_wandb(tmp_path):
    cfg = load_config("tiny_cpu", ["logging.wandb_mode=disabled"])
    t = Tracker(cfg, tmp_path)
    t.log({"loss": 1.5, "note": "text is not a metric"}, step=3, prefix="sft/")
    t.table("grpo/samples", SAMPLE_COLUMNS, sample_rows([traj("a", 0.25)], k=4), step=7)
    t.finish()
    (metrics,) = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics["step"] == 3 and metrics["sft/loss"] == 1.5 and "sft/note" not in metrics
    (row,) = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert row["table"] == "grpo/samples" and row["step"] == 7 and row["task_id"] == "a" and row["reward"] == 0.25


def test_wandb_settings_the_environment_wins_over_the_config():
    import pytest

    from core.errors import UserError
    from core.tracking import wandb_settings
    cfg = load_config("tiny_cpu", ["name=exp", "logging.wandb_mode=online", "logging.wandb_group=sweep1",
                                   "logging.wandb_tags=[grpo,tiny]"])
    assert wandb_settings(cfg, {}) == {"mode": "online", "project": "terminus", "entity": None, "name": "exp",
                                       "group": "sweep1", "tags": ["grpo", "tiny"]}
    env = {"WANDB_MODE": "disabled", "WANDB_PROJECT": "p", "WANDB_NAME": "n", "WANDB_RUN_GROUP": "g",
           "WANDB_TAGS": "a, b"}
    assert wandb_settings(cfg, env) == {"mode": "disabled", "project": "p", "entity": None, "name": "n",
                                        "group": "g", "tags": ["a", "b"]}
    assert wandb_settings(cfg, {"WANDB_MODE": "dryrun"})["mode"] == "offline"   # W&B's own alias
    with pytest.raises(UserError, match="WANDB_MODE='loud'"):
        wandb_settings(cfg, {"WANDB_MODE": "loud"})
    plain = load_config("tiny_cpu", ["name=exp"])
    assert (wandb_settings(plain, {})["group"], wandb_settings(plain, {})["tags"]) == (None, None)


def test_wandb_offline_run_from_the_environment_with_name_group_and_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")   # wins over the config's disabled
    cfg = load_config("tiny_cpu", ["logging.wandb_mode=disabled", "logging.wandb_name=seed0",
                                   "logging.wandb_group=sweep1", "logging.wandb_tags=[grpo,tiny]"])
    t = Tracker(cfg, tmp_path)
    try:
        assert t.run is not None and t.run.name == "seed0" and t.run.group == "sweep1"
        assert list(t.run.tags) == ["grpo", "tiny"] and t.run.settings.mode == "offline"
        t.log({"loss": 1.0}, step=1)
    finally:
        t.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    monkeypatch.setenv("WANDB_MODE", "disabled")  # ...and over the config's offline
    quiet = Tracker(load_config("tiny_cpu"), tmp_path / "quiet")
    assert quiet.run is None
    quiet.finish()
