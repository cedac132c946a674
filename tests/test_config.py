"""Configs: composition, overrides, and clear errors for bad input."""
from pathlib import Path

import pytest

from terminus.config import ConfigError, load_config, section
from rollout.config import RolloutConfig


def test_shipped_configs_load():
    tiny = load_config("tiny_cpu")
    assert tiny.model.path == "tiny" and tiny.judge.backend == "rules"
    big = load_config("configs/qwen3_4b.yaml")
    assert big.rollout.episode.max_turns == 10 and big.trainer.param_dtype == "bfloat16"


def test_overrides_apply_and_interpolate():
    cfg = load_config("tiny_cpu", ["rollout.sampling.temperature=0.5", "name=exp1"])
    assert cfg.rollout.sampling.temperature == 0.5
    assert cfg.output_dir == "runs/exp1"
    typed = section(cfg, "rollout")
    assert isinstance(typed, RolloutConfig) and typed.sampling.temperature == 0.5


@pytest.mark.parametrize("override, message", [
    ("rollout.engine.kind=vlm", "'rollout.engine.kind' = 'vlm' is not allowed; choose one of: vllm, openai"),
    ("rollout.sampling.temperature=-1", "'rollout.sampling.temperature' = -1.0 is out of range; it must be in [0.0, 5.0]"),
    ("trainer.optim.lr=0", "'trainer.optim.lr' = 0.0 is out of range; it must be > 0"),
    ("rollout.bogus=1", "unknown config key 'rollout.bogus'; known keys under 'rollout': engine"),
    ("trainer.optim.lr=fast", "bad value for 'trainer.optim.lr'"),
    ("rollout.episode.max_turns=0", "'rollout.episode.max_turns' = 0 is out of range; it must be >= 1"),
    ("trainer.sft.demo_fraction=0", "'trainer.sft.demo_fraction' = 0.0 is out of range; it must be in (0, 1.0]"),
])
def test_bad_overrides_name_key_source_and_allowed(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny_cpu", [override])
    assert str(e.value).startswith("command line: ")
    assert message in str(e.value)


def test_bad_file_names_the_file(tmp_path: Path):
    f = tmp_path / "bad.yaml"
    f.write_text("judge:\n  backend: oracle\n")
    with pytest.raises(ConfigError, match=rf"{f}: 'judge.backend' = 'oracle' is not allowed; choose one of: rules, vllm, openai"):
        load_config(f)
    f.write_text("trainer:\n  optim:\n    lrr: 1\n")
    with pytest.raises(ConfigError, match=rf"{f}: unknown config key 'trainer.optim.lrr'"):
        load_config(f)
    f.write_text("trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(f)


def test_grpo_refuses_sampling_it_cannot_train():
    from rl.config import check_grpo_sampling
    with pytest.raises(ConfigError, match="set rollout.engine.logprobs_mode=processed_logprobs"):
        check_grpo_sampling(load_config("tiny_cpu", ["rollout.engine.logprobs_mode=raw_logprobs"]))   # T=0.8
    with pytest.raises(ConfigError, match="temperature=0 .greedy. with a GRPO stage"):
        check_grpo_sampling(load_config("tiny_cpu", ["rollout.sampling.temperature=0"]))
    check_grpo_sampling(load_config("tiny_cpu", ["rollout.engine.logprobs_mode=raw_logprobs",
                                                 "rollout.sampling.temperature=1.0"]))
    check_grpo_sampling(load_config("tiny_cpu"))
    load_config("tiny_cpu", ["rollout.sampling.temperature=0"])   # greedy evaluation: a valid config


def test_missing_config_and_malformed_override():
    with pytest.raises(ConfigError, match="config file 'nope' not found.*known configs: .*tiny_cpu"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config("tiny_cpu", ["temperature"])
