"""The terminus CLI: help everywhere, config show with overrides, clear errors."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "terminus.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_help_lists_subcommands():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("model", "config"):
        assert cmd in r.stdout
    assert cli("model", "build-tiny", "--help").returncode == 0
    assert cli("config", "show", "--help").returncode == 0


def test_config_show_resolves_overrides():
    r = cli("config", "show", "tiny_cpu", "rollout.sampling.temperature=0.25", "name=x")
    assert r.returncode == 0, r.stderr
    assert "temperature: 0.25" in r.stdout and "output_dir: runs/x" in r.stdout


def test_config_show_bad_value_is_clear():
    r = cli("config", "show", "tiny_cpu", "judge.backend=oracle")
    assert r.returncode == 2
    assert "terminus: error: command line: 'judge.backend' = 'oracle' is not allowed; choose one of: rules, vllm, openai" in r.stderr
