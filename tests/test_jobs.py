"""Ray jobs through the real Job Submission API: a local Ray head with its job server, and the
`terminus submit | status | logs | stop` commands run as the user runs them (subprocesses)."""
import subprocess
import sys
import time

import pytest

from cluster import jobs
from cluster.local import LocalCluster
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def terminus(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "terminus.cli", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"terminus {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def head():
    with LocalCluster(cpus_per_node=2, dashboard=True) as c:
        yield c.dashboard_url


def test_train_entrypoint_quotes_overrides():
    e = jobs.train_entrypoint("tiny_cpu", ["name=my run", "trainer.grpo.steps=2"])
    assert e == "python -m terminus.cli train --config tiny_cpu 'name=my run' trainer.grpo.steps=2"
    assert jobs.resolve_address("10.0.0.1:8265") == "http://10.0.0.1:8265"


def test_submit_rejects_a_bad_config_before_submitting(head):
    r = terminus("submit", "--address", head, "--config", "tiny_cpu", "cluster.layout=spread", check=False)
    assert r.returncode == 2 and "cluster.layout" in r.stderr


def test_submit_runs_the_repo_code_and_env_then_status_and_logs(head):
    # The job runs a terminus command from the uploaded working dir, with an env var from --env.
    cmd = "python -m terminus.cli config show tiny_cpu name=$RUN_NAME"
    job = terminus("submit", "--address", head, "--entrypoint", cmd, "--env", "RUN_NAME=from_env").stdout.strip()
    assert job
    assert jobs.wait(job, head, timeout_s=180) == "SUCCEEDED"
    assert terminus("status", job, "--address", head).stdout.startswith("SUCCEEDED")
    log = terminus("logs", job, "--address", head).stdout
    assert "name: from_env" in log and "layout: colocated" in log


def test_failed_job_is_reported(head):
    # --wait follows the log and exits non-zero when the job failed
    r = terminus("submit", "--address", head, "--wait", "--entrypoint",
                 "python -m terminus.cli config show no_such_config", check=False)
    job = r.stdout.splitlines()[0].strip()
    assert r.returncode == 1 and "not found" in r.stdout and f"job {job}: FAILED" in r.stderr
    assert jobs.status(job, head)[0] == "FAILED"
    assert "not found" in jobs.logs(job, head)


def test_stop_a_long_job(head):
    job = terminus("submit", "--address", head, "--entrypoint",
                   "python -c 'import time; print(\"started\", flush=True); time.sleep(600)'").stdout.strip()
    deadline = time.monotonic() + 120
    while jobs.status(job, head)[0] != "RUNNING":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)
    assert "stop requested" in terminus("stop", job, "--address", head).stdout
    assert jobs.wait(job, head, timeout_s=60) == "STOPPED"


def test_submit_makes_a_relative_output_dir_absolute_and_passes_the_runtime_env(tmp_path, monkeypatch, capsys):
    """What `terminus submit --config` hands Ray, with the submission itself captured at the seam."""
    from terminus.cli import main

    env_file = tmp_path / "env.yaml"
    env_file.write_text("pip: [six==1.16.0]\nimage_uri: registry.example/terminus:1\n"
                        "env_vars: {FROM_FILE: 'yes', RUN_NAME: file}\nexcludes: [data]\n")
    sent = {}
    monkeypatch.setattr(jobs, "_client", lambda address: type("C", (), {
        "submit_job": lambda self, **kw: sent.update(kw) or "job-1"})())
    monkeypatch.chdir(tmp_path)
    assert main(["submit", "--config", "tiny_cpu", "output_dir=runs/rel", "--runtime-env", str(env_file),
                 "--env", "RUN_NAME=cli"]) == 0
    assert f"output_dir={tmp_path}/runs/rel" in sent["entrypoint"]
    assert f"the job writes to {tmp_path}/runs/rel" in capsys.readouterr().err
    env = sent["runtime_env"]
    assert env["pip"] == ["six==1.16.0"] and env["image_uri"] == "registry.example/terminus:1"
    assert env["env_vars"]["FROM_FILE"] == "yes" and env["env_vars"]["RUN_NAME"] == "cli"   # --env wins
    assert env["working_dir"] == str(ROOT) and {".venv", "data"} <= set(env["excludes"])
    # an absolute output_dir is left as it is
    sent.clear()
    assert main(["submit", "--config", "tiny_cpu", f"output_dir={tmp_path}/abs"]) == 0
    assert f"output_dir={tmp_path}/abs" in sent["entrypoint"] and "relative" not in capsys.readouterr().err
    # a runtime env file that is not a mapping: exit 2, the file named
    env_file.write_text("- pip\n")
    assert main(["submit", "--config", "tiny_cpu", "--runtime-env", str(env_file)]) == 2
    assert f"--runtime-env {env_file} must hold a mapping" in capsys.readouterr().err


def test_a_runtime_env_file_reaches_the_job(head, tmp_path):
    env_file = tmp_path / "env.json"
    env_file.write_text('{"env_vars": {"FROM_FILE": "from-the-file"}, "config": {"setup_timeout_seconds": 300}}')
    job = terminus("submit", "--address", head, "--runtime-env", str(env_file), "--entrypoint",
                   "python -c 'import os; print(\"seen:\", os.environ[\"FROM_FILE\"])'").stdout.strip()
    assert jobs.wait(job, head, timeout_s=180) == "SUCCEEDED"
    assert "seen: from-the-file" in jobs.logs(job, head)
    from ray.job_submission import JobSubmissionClient
    info = JobSubmissionClient(head).get_job_info(job)
    assert info.runtime_env["config"]["setup_timeout_seconds"] == 300
