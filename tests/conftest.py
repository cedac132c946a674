"""Shared test setup: every test process uses the repository's venv tools and a small vLLM KV cache."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# W&B variables of the environment win over a config's logging.* (core.tracking): tests get
# what their config says, whatever the shell running them sets.
for _var in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_NAME", "WANDB_RUN_GROUP", "WANDB_TAGS"):
    os.environ.pop(_var, None)
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Subprocesses (terminus CLI, ray start, vllm serve) come from the same environment as pytest.
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def tok():
    """The embedded tiny model's tokenizer (built once into the cache)."""
    from transformers import AutoTokenizer

    from core.model import resolve_model_path
    return AutoTokenizer.from_pretrained(str(resolve_model_path("tiny")))


@pytest.fixture(autouse=True)
def _no_shared_wandb_service():
    """A W&B run in the test process starts a W&B service and exports WANDB_SERVICE; a training
    subprocess started later would join that service, and a run it was killed in would still be
    'in use' there when the test resumes it. Each test's subprocesses get a service of their own."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's exit status, skipping the interpreter's teardown: native libraries that
    tests load into this process (vLLM's CPU engine, Ray's core worker, torch's thread pools) once
    segfaulted in their destructors after all 428 tests had passed (exit 139: a red CI for a green
    suite). The summary is printed by then; only the destructors are skipped."""
    if _EXIT_STATUS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
