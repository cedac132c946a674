"""A run directory is resumed only by the run it holds: a config that differs outside the allow-list
stops `terminus train` before anything starts (no Ray here), naming each key and the ways out."""
import pytest
from omegaconf import OmegaConf

from rl.resume import (RESUMABLE, RunMismatch, check_resume, config_differences, flatten, prepare_run_dir)
from terminus.cli import main
from terminus.config import load_config


def run_of(tmp_path, *overrides):
    return load_config("tiny_cpu", [f"output_dir={tmp_path / 'run'}", *overrides])


def saved_run(tmp_path, *overrides):
    """A run directory as `terminus train` leaves it: the saved config and a complete checkpoint."""
    cfg = run_of(tmp_path, *overrides)
    prepare_run_dir(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000002"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "COMPLETE").write_text("")
    return cfg


def test_differences_name_key_saved_and_new_values_outside_the_allow_list():
    saved = {"seed": 0, "logging": {"wandb_mode": "offline"}, "trainer": {"grpo": {"steps": 4, "lr": 1e-6},
                                                                        "checkpoint": {"resume": "auto"}},
             "cluster": {"address": ""}, "tasks": {"families": ["a", "b"]}}
    new = {"seed": 1, "logging": {"wandb_mode": "online"}, "trainer": {"grpo": {"steps": 8, "lr": 2e-6},
                                                                     "checkpoint": {"resume": "never"}},
           "cluster": {"address": "head:6379"}, "tasks": {"families": ["a"]}, "new_key": 1}
    assert config_differences(saved, new) == [("seed", 0, 1), ("tasks.families", ["a", "b"], ["a"]),
                                              ("trainer.grpo.lr", 1e-6, 2e-6)]
    assert config_differences(saved, saved) == []
    assert flatten({"a": {"b": 1, "c": {}}}) == {"a.b": 1, "a.c": {}}
    assert "logging.*" in RESUMABLE and "trainer.grpo.steps" in RESUMABLE


def test_another_seed_in_the_same_output_dir_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init before the check"))
    saved_run(tmp_path)
    code = main(["train", "-c", "tiny_cpu", f"output_dir={tmp_path / 'run'}", "seed=1", "trainer.grpo.lr=3e-6"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for words in ("seed: saved 0, now 1", "trainer.grpo.lr: saved", "now 3e-06", "trainer.checkpoint.resume=never",
                  "output_dir=", str(tmp_path / "run" / "config.yaml")):
        assert words in err, (words, err)


def test_the_same_run_and_allowed_changes_resume(tmp_path):
    saved_run(tmp_path)
    check_resume(run_of(tmp_path))
    check_resume(run_of(tmp_path, "trainer.grpo.steps=99", "logging.wandb_mode=disabled", "logging.wandb_tags=[x]"))
    with pytest.raises(RunMismatch, match="seed: saved 0, now 1"):
        check_resume(run_of(tmp_path, "seed=1"))


def test_nothing_to_resume_means_nothing_to_check(tmp_path):
    cfg = run_of(tmp_path)
    prepare_run_dir(cfg)                          # a saved config, but no checkpoint: a fresh start
    check_resume(run_of(tmp_path, "seed=1"))


def test_resume_never_starts_over_and_sets_the_old_checkpoints_aside(tmp_path):
    saved_run(tmp_path)
    cfg = run_of(tmp_path, "seed=1", "trainer.checkpoint.resume=never")
    check_resume(cfg)
    run_dir = prepare_run_dir(cfg)
    assert not (run_dir / "checkpoints").exists()
    (aside,) = run_dir.glob("checkpoints.before-*")
    assert (aside / "step_000002" / "COMPLETE").exists()            # kept, not deleted
    assert OmegaConf.load(run_dir / "config.yaml").seed == 1       # the new run's config is the saved one
    check_resume(run_of(tmp_path, "seed=1"))                        # ...and a later resume=auto matches it
