"""Configs: composition, overrides, and clear errors for bad input."""
from pathlib import Path

import pytest

from terminus.config import ConfigError, load_config, section
from rollout.config import RolloutConfig


def test_shipped_configs_load():
    tiny = load_config("tiny_cpu")
    assert tiny.model.path == "tiny-copy-obs" and tiny.judge.backend == "rules"
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
    ("trainer.grpo.clip_ratio_c=1", "'trainer.grpo.clip_ratio_c' = 1.0 is out of range; it must be > 1.0"),
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


def test_grpo_refuses_truncated_or_constrained_sampling():
    """The trainer trains softmax(logits / T) over the whole vocabulary: sampling it cannot reproduce
    (a grammar, a nucleus, a top-k) is refused for GRPO, naming the key and its neutral value."""
    from rl.config import check_grpo_sampling
    for override, fix in [("rollout.sampling.constrain=protocol", "set rollout.sampling.constrain=none"),
                          ("rollout.sampling.top_p=0.9", "set rollout.sampling.top_p=1.0"),
                          ("rollout.sampling.top_k=20", "set rollout.sampling.top_k=-1")]:
        with pytest.raises(ConfigError) as e:
            check_grpo_sampling(load_config("tiny_cpu", [override]))
        assert str(e.value).startswith(f"{override} with a GRPO stage") and fix in str(e.value)
        load_config("tiny_cpu", [override])   # evaluating or serving with it: a valid config
    check_grpo_sampling(load_config("tiny_cpu", ["rollout.sampling.top_k=0", "rollout.sampling.top_p=1.0"]))


def test_kl_coef_without_a_reference_model_is_an_error():
    with pytest.raises(ConfigError, match="trainer.grpo.kl_coef=0.1 with trainer.use_reference_model=false.*"
                                          "set trainer.use_reference_model=true, or trainer.grpo.kl_coef=0"):
        load_config("tiny_cpu", ["trainer.grpo.kl_coef=0.1"])
    cfg = load_config("tiny_cpu", ["trainer.grpo.kl_coef=0.1", "trainer.use_reference_model=true"])
    assert cfg.trainer.grpo.kl_coef == 0.1


def test_grpo_starts_with_a_fresh_optimizer_by_default():
    assert load_config("tiny_cpu").trainer.grpo.fresh_optimizer is True
    assert load_config("tiny_cpu", ["trainer.grpo.fresh_optimizer=false"]).trainer.grpo.fresh_optimizer is False


def test_missing_config_and_malformed_override():
    with pytest.raises(ConfigError, match="config file 'nope' not found.*known configs: .*tiny_cpu"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config("tiny_cpu", ["temperature"])


def test_named_configs_are_found_in_the_packaged_copy(tmp_path, monkeypatch):
    """Outside a checkout there is no configs/ next to the package: the wheel's terminus/configs serves."""
    import terminus.config as c
    packaged = tmp_path / "site" / "terminus" / "configs"
    packaged.mkdir(parents=True)
    (packaged / "mine.yaml").write_text("seed: 7\n")
    monkeypatch.setattr(c, "CONFIG_DIR", tmp_path / "no_checkout" / "configs")
    monkeypatch.setattr(c, "PACKAGED_CONFIG_DIR", packaged)
    monkeypatch.chdir(tmp_path)
    assert c.resolve_config_path("mine") == packaged / "mine.yaml"
    assert c.resolve_config_path("configs/mine.yaml") == packaged / "mine.yaml"   # the documented spelling
    assert load_config("mine").seed == 7
    with pytest.raises(ConfigError, match=f"looked in . and {packaged}.*known configs: mine"):
        load_config("tiny_cpu")


def test_in_a_checkout_both_places_are_configs(monkeypatch):
    import terminus.config as c
    assert c.config_dirs() == [c.CONFIG_DIR.resolve()]          # terminus/configs links to configs/
    assert {"tiny_cpu", "qwen3_4b"} <= set(c.named_configs())


def test_the_wheel_ships_the_named_configs_and_the_license(tmp_path):
    """Build a wheel from a copy of the tree (no build litter in the checkout), run `config show` from it."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for f in files:
        if not (root / f).exists() and not (root / f).is_symlink():
            continue                                        # deleted in the work tree
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        if (root / f).is_symlink():
            os.symlink(os.readlink(root / f), src / f)
        else:
            shutil.copy2(root / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("terminus-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert z.read("terminus/configs/tiny_cpu.yaml") == (root / "configs" / "tiny_cpu.yaml").read_bytes()
        assert "terminus/configs/qwen3_4b.yaml" in names
        assert any(n.endswith("licenses/LICENSE") for n in names)
        assert "License: Apache-2.0" in z.read(next(n for n in names if n.endswith("METADATA"))).decode()
        z.extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-c", "import terminus, terminus.cli as c; print(terminus.__file__); "
                        "c.main(['config', 'show', '-c', 'qwen3_4b'])"],
                       cwd=elsewhere, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(tmp_path / "site")) and "name: qwen3_4b" in r.stdout
