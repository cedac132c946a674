"""A task corpus on disk, and `load_tasks`, the one way the rest of the system gets tasks.

Layout of a corpus directory:

    CORPUS/
      train.jsonl  validation.jsonl  test.jsonl   one Task per line; repo_dir relative to CORPUS
      repos/<task id>/                            the repository snapshots (read-only templates)
      shared/<project>/                           trees a project's tasks share (node_modules), bound
                                                  read-only into their sandboxes (Task.environment)
      corpus.json                                 counts per split/language/category, provenance
      COMPLETE                                    written last: a corpus without it is partial

`load_tasks(cfg.tasks, split)` builds the built-in or the generated corpus into the cache on first use
(keyed by a hash of its sources and settings, so an edit rebuilds it) and reuses it afterwards.
Writing a corpus directory is tasks.store's (the builders use it, and this module uses them).
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from core.errors import UserError
from core.model import cache_root
from sandbox.config import SandboxConfig
from tasks.builtin import build_builtin, templates_hash
from tasks.config import GeneratedConfig
from tasks.generated import build_generated, corpus_key, specs
from tasks.store import SPLITS
from tasks.types import Task

class CorpusError(UserError, ValueError):
    """A missing, partial or empty corpus or split; the message says what and how to fix it."""


def read_split(corpus_dir: Path, split: str) -> list[Task]:
    if split not in SPLITS:
        raise CorpusError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if not corpus_dir.is_dir():
        raise CorpusError(f"task corpus {corpus_dir} does not exist; build one with `terminus tasks build "
                          f"--out {corpus_dir}`, or set tasks.corpus=builtin")
    if not (corpus_dir / "COMPLETE").exists():
        raise CorpusError(f"task corpus {corpus_dir} is incomplete (no COMPLETE marker: its build was "
                          "interrupted); rebuild it")
    path = corpus_dir / f"{split}.jsonl"
    if not path.is_file():
        raise CorpusError(f"task corpus {corpus_dir} has no {split}.jsonl")
    tasks = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            t = Task.from_dict(json.loads(line))
        except (ValueError, TypeError) as e:
            raise CorpusError(f"{path}:{n}: not a valid task record ({e})") from None
        if not os.path.isabs(t.repo_dir):
            t.repo_dir = str(corpus_dir / t.repo_dir)
        t.environment = t.environment.resolved(str(corpus_dir))
        tasks.append(t)
    if not tasks:
        raise CorpusError(f"split {split!r} of task corpus {corpus_dir} is empty; pick another split "
                          "(tasks.train_split / tasks.eval_split) or rebuild the corpus")
    return tasks


def _cache(cache_dir: str) -> Path:
    return Path(cache_dir) if cache_dir else cache_root() / "tasks"


def builtin_dir(cache_dir: str = "") -> Path:
    """Where the built-in corpus lives (built on demand by `load_tasks`)."""
    return _cache(cache_dir) / f"builtin-{templates_hash()}"


def generated_dir(cfg, cache_dir: str = "") -> Path:
    """Where the generated corpus of a `tasks.generated` config lives (built on demand)."""
    return _cache(cache_dir) / f"generated-{corpus_key(cfg)}"


def _build_once(target: Path, build) -> Path:
    """Build a corpus into `target` unless a complete copy is there. Safe when several processes race:
    each builds in a private temporary directory (`build(tmp)`, a coroutine) and the first rename wins."""
    if (target / "COMPLETE").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        _run_sync(build(tmp))
        os.rename(tmp, target)
    except OSError:
        if not (target / "COMPLETE").exists():   # not a lost race: a real failure
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_builtin(cache_dir: str = "", sandbox_cfg=None) -> Path:
    """Build the built-in corpus unless a complete copy is cached."""
    return _build_once(builtin_dir(cache_dir), lambda tmp: build_builtin(tmp, sandbox_cfg or SandboxConfig()))


def ensure_generated(cfg, cache_dir: str = "", sandbox_cfg=None, validate=None) -> Path:
    """Build the generated corpus of `cfg` (tasks.generated) unless a complete copy is cached; prints
    progress to stderr (a few hundred projects take a minute; stdout is the commands' results).

    `validate(corpus_dir, sandbox_cfg)`, a coroutine, checks the fresh build before it is cached and
    raises to refuse it: evaluation.validate.validate_sample replays a sample of its tasks through the
    episode path. Episodes are rollout's and the check is the rules judge's, both layers above this
    one, so the caller passes it in (every command and the training job do); None skips the check."""
    target = generated_dir(cfg, cache_dir)
    if not (target / "COMPLETE").exists():
        n = len(specs(cfg))
        print(f"[tasks] building the generated corpus ({n} projects) into {target}", file=sys.stderr, flush=True)

        def progress(done: int, total: int) -> None:
            if done % 50 == 0 or done == total:
                print(f"[tasks] {done}/{total} projects run for their ground truth", file=sys.stderr, flush=True)
        async def build_and_validate(tmp: Path) -> None:
            sandbox = sandbox_cfg or SandboxConfig()
            await build_generated(tmp, cfg, sandbox, progress=progress)
            if validate is not None:
                await validate(tmp, dataclasses.replace(sandbox, output_limit_bytes=cfg.observation_cap))
        _build_once(target, build_and_validate)
    return target


def _run_sync(coro):
    """Run a coroutine to completion, also when called from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def built_observation_cap(corpus_dir: Path) -> int:
    """The output per command a manifest build checked the corpus's facts against (corpus.json's
    observation_cap; 0 when it records none)."""
    summary = corpus_dir / "corpus.json"
    return json.loads(summary.read_text()).get("observation_cap", 0) if summary.is_file() else 0


def check_observation_cap(corpus_dir: Path, observation_cap: int) -> None:
    """A corpus whose facts were checked against more output than episodes will show is refused: the
    agent could not see some of them."""
    built_for = built_observation_cap(corpus_dir)
    if observation_cap and built_for > observation_cap:
        raise CorpusError(f"task corpus {corpus_dir} keeps facts visible in {built_for} bytes of output, but episodes "
                          f"show {observation_cap} (rollout.sandbox.output_limit_bytes): rebuild it with "
                          f"`terminus tasks build ... --observation-cap {observation_cap}`, or raise the limit")


def load_tasks(corpus, split: str, cache_dir: str = "", observation_cap: int = 0, validate=None) -> list[Task]:
    """The tasks of one split. `corpus` is the `tasks` config section (TasksConfig: its `corpus` is
    "builtin", "generated" or a corpus directory), or that name alone ("generated" then uses the
    default `tasks.generated` settings). `observation_cap`: the output episodes will show per
    command; a corpus built for more is refused (check_observation_cap). `validate`: the check a
    generated corpus built now must pass before it is cached (ensure_generated)."""

    name = corpus if isinstance(corpus, str) else corpus.corpus
    cache_dir = cache_dir or ("" if isinstance(corpus, str) else corpus.cache_dir)
    if name == "builtin":
        return read_split(ensure_builtin(cache_dir), split)
    if name == "generated":
        gen = GeneratedConfig() if isinstance(corpus, str) else corpus.generated
        if not isinstance(gen, GeneratedConfig):   # an OmegaConf section: the plain dataclass keys the cache
            gen = GeneratedConfig(**{k: (list(v) if k == "families" else v) for k, v in gen.items()})
        return read_split(ensure_generated(gen, cache_dir, validate=validate), split)
    corpus_dir = Path(name).expanduser().resolve()
    if corpus_dir.is_dir():
        check_observation_cap(corpus_dir, observation_cap)
    return read_split(corpus_dir, split)
