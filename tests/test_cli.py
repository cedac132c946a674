"""The terminus CLI: help everywhere, config show with overrides, one convention for configs and tasks,
and a user's mistake as one line and exit 2 (never a traceback)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.types import Fact, GroundTruth, Task
from terminus import __version__
from terminus.cli import main
from evaluation.tasks_io import write_task_list

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


# -- a user's mistake: one line on stderr, exit 2, no traceback ------------------------------------------------------

DEAD = "http://127.0.0.1:9/v1"   # the discard port: nothing listens


def assert_user_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminus: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture
def no_ray(monkeypatch):
    """A user's mistake must be caught before Ray starts."""
    import ray

    def refuse(*a, **k):
        raise AssertionError("ray.init called before the user's mistake was caught")
    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def inputs(tmp_path):
    """Good and bad files a user might pass."""
    repo = tmp_path / "repo"
    repo.mkdir()
    task = Task("t0", "python", "run_tests", "p", str(repo), "Run the tests.", split="validation",
                ground_truth=GroundTruth(exit_status=0, facts=[Fact("ok", "passes", [r"ok"])]))
    write_task_list([task], tmp_path / "tasks.jsonl")
    (tmp_path / "bad_tasks.jsonl").write_text(json.dumps({"id": "t1"}) + "\n")
    (tmp_path / "bad_traj.jsonl").write_text("{not json\n")
    (tmp_path / "bad.yaml").write_text("seed: [1, 2\nname: x\n")
    model = tmp_path / "model"   # what resolve_model_path checks: enough to get past it
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_text("")
    (model / "tokenizer.json").write_text("{}")
    no_tok = tmp_path / "no_tokenizer"   # a model directory someone copied without its tokenizer
    no_tok.mkdir()
    (no_tok / "config.json").write_text("{}")
    (no_tok / "model.safetensors").write_text("")
    return tmp_path


CASES = {
    "missing config": (["config", "show", "-c", "nope"], ["'nope' not found", "tiny_cpu"]),
    "malformed config": (["config", "show", "-c", "{t}/bad.yaml"], ["bad.yaml: cannot parse YAML"]),
    "bad override": (["config", "show", "-c", "tiny_cpu", "seed"], ["not of the form key=value"]),
    "missing task file": (["rollout", "--tasks", "{t}/none.jsonl", "--out", "{t}/o.jsonl"], ["none.jsonl not found"]),
    "split given as --tasks": (["rollout", "--tasks", "validation", "--out", "{t}/o.jsonl"], ["--split validation"]),
    "malformed task file": (["eval", "--tasks", "{t}/bad_tasks.jsonl"], ["bad_tasks.jsonl:1: not a Task record"]),
    "bad corpus directory": (["distill", "tasks.corpus={t}/no_corpus"], ["no_corpus does not exist", "tasks build"]),
    "bad corpus for tasks list": (["tasks", "list", "tasks.corpus={t}/no_corpus"], ["no_corpus does not exist"]),
    "bad corpus directory for tasks validate": (["tasks", "validate", "{t}/no_corpus"], ["no_corpus does not exist"]),
    "tasks build of a built corpus": (["tasks", "build", "tasks.corpus={t}/repo"], ["is a corpus directory",
                                                                                  "--manifest"]),
    "malformed trajectory file": (["train-offline", "--stage", "sft", "--data", "{t}/bad_traj.jsonl",
                                   "model.path={t}/model", "output_dir={t}/run"],
                                  ["bad_traj.jsonl:1: not a trajectory record"]),
    "missing trajectory file": (["train-offline", "--stage", "sft", "--data", "{t}/none.jsonl",
                                 "model.path={t}/model", "output_dir={t}/run"], ["none.jsonl' does not exist"]),
    "bad model path": (["train", "model.path={t}/no_model", "output_dir={t}/run"], ["no_model' does not exist"]),
    "model without a tokenizer": (["train", "model.path={t}/no_tokenizer", "output_dir={t}/run"],
                                  ["no_tokenizer' has no tokenizer files", "tokenizer.json", "build-tiny"]),
    "rollout with a model without a tokenizer": (["rollout", "--tasks", "{t}/tasks.jsonl", "--out", "{t}/o.jsonl",
                                                  "model.path={t}/no_tokenizer"], ["has no tokenizer files"]),
    "unreachable subagent": (["eval", "--tasks", "{t}/tasks.jsonl", "-s", f"openai:m@{DEAD}"],
                             ["127.0.0.1:9", "unreachable"]),
    "unreachable main agent": (["study", "--tasks", "{t}/tasks.jsonl", "--main", f"openai:m@{DEAD}"],
                               ["127.0.0.1:9", "unreachable"]),
    "unreachable rollout endpoint": (["rollout", "--tasks", "{t}/tasks.jsonl", "--out", "{t}/o.jsonl",
                                      "rollout.engine.kind=openai",
                                      f"rollout.engine.base_url={DEAD}", "rollout.engine.max_retries=0"],
                                     ["127.0.0.1:9", "unreachable"]),
    "bad WANDB_MODE": (["train", "output_dir={t}/run"], ["WANDB_MODE='loud'"]),
    "more engines than rollout workers": (["train", "rollout.engine.num_engines=3", "rollout.num_workers=2",
                                           "output_dir={t}/run"],
                                          ["num_engines=3 cannot be placed", "rollout.num_workers=2"]),
    "train with an endpoint engine": (["train", "rollout.engine.kind=openai", "output_dir={t}/run"],
                                      ["training needs rollout.engine.kind=vllm"]),
    "compare without runs": (["compare", "{t}/a", "{t}/b"], ["summary.json not found"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_mistakes_are_one_line_and_exit_2(case, inputs, capsys, monkeypatch, no_ray):
    argv, words = CASES[case]
    if case == "bad WANDB_MODE":
        monkeypatch.setenv("WANDB_MODE", "loud")
    code = main([a.replace("{t}", str(inputs)) for a in argv])
    assert_user_error(code, capsys.readouterr().err, *words)


def test_user_mistake_in_a_real_process_has_no_traceback(tmp_path):
    r = cli("train", "-c", "tiny_cpu", f"model.path={tmp_path}/none", f"output_dir={tmp_path}/run")
    assert_user_error(r.returncode, r.stderr, "does not exist")
    assert not (tmp_path / "run").exists()   # stopped before doing anything


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"terminus {__version__}"


def test_config_show_takes_dash_c_and_the_old_positional_name(capsys):
    assert main(["config", "show", "-c", "qwen3_4b", "seed=3"]) == 0
    new = capsys.readouterr().out
    assert main(["config", "show", "qwen3_4b", "seed=3"]) == 0
    assert capsys.readouterr().out == new and "seed: 3" in new and "name: qwen3_4b" in new


def test_every_config_command_takes_dash_c_and_task_commands_take_split_and_tasks():
    from terminus.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices
    for name in ("train", "train-offline", "submit", "rollout", "eval", "distill", "serve", "study"):
        opts = sub[name]._option_string_actions
        assert "-c" in opts and "--config" in opts, name
    tasks = sub["tasks"]._subparsers._group_actions[0].choices
    for name in ("list", "show", "build", "validate"):
        opts = tasks[name]._option_string_actions
        assert "-c" in opts and "--config" in opts and "--corpus" not in opts, name
    for name in ("rollout", "eval", "distill", "study"):
        opts = sub[name]._option_string_actions
        assert {"--split", "--tasks", "--limit"} <= set(opts), name
        assert opts["--tasks"].dest == opts["--tasks-file"].dest == "tasks_file"   # the old spelling still works


def test_tasks_commands_select_the_corpus_by_config(tmp_path, capsys):
    """tasks.corpus from an override, a config file or a leading CORPUS argument: the same corpus each way;
    the default is the default config's (tiny_cpu: generated), not another one."""
    import shutil

    from tasks import load_tasks
    from tasks.corpus import ensure_builtin
    want = [t.id for t in load_tasks("builtin", "validation")]

    def listed(*argv) -> list[str]:
        assert main(["tasks", "list", "--split", "validation", *argv]) == 0
        return [line.split()[0] for line in capsys.readouterr().out.splitlines()]

    assert listed("tasks.corpus=builtin") == want
    assert listed("builtin") == want
    mine = tmp_path / "mine"                     # a corpus directory of one's own
    shutil.copytree(ensure_builtin(), mine)
    (tmp_path / "mine.yaml").write_text(f"tasks:\n  corpus: {mine}\n")
    assert listed("-c", str(tmp_path / "mine.yaml")) == want
    assert listed(str(mine)) == want
    assert main(["tasks", "show", want[0], "-c", str(tmp_path / "mine.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == want[0]
    assert main(["tasks", "show", want[0], "tasks.corpus=generated", "tasks.generated.train_variants=8",
                 "tasks.generated.eval_variants=3"]) == 2     # not in the generated corpus
    assert f"no task '{want[0]}' in corpus generated" in capsys.readouterr().err
