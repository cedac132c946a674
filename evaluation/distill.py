"""`terminus distill`: SFT data from a teacher subagent, the paper's way.

For each training task: run the teacher (`samples` episodes), judge every trajectory, keep those
scoring >= threshold with no episode error, drop duplicates (same task, same commands, same report),
and append them to the output JSONL with provenance:

    {"trajectory": {...Trajectory...}, "provenance": {"teacher": ..., "judge": ..., "verdict": {...},
     "task": {"id", "category", "project", "split", "language"}, "created": ...}}

Resumable: `<out>.progress.jsonl` records every finished task (kept or not, with counts); a rerun
skips those tasks. Rate limits are the teacher endpoint's (rollout.engine.requests_per_minute,
tokens_per_minute). Failed episodes are counted per task and in the summary, never written as data.
"""
from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from core.errors import ConfigError
from evaluation.judging import Judge, open_judge
from evaluation.subagents import SubagentError, SubagentSpec, engine_config, open_subagent, preflight
from rl.checkpoint import checkpoint_root, latest, read_state
from rollout.teacher import load_demos


def dedup_key(traj: Any) -> str:
    """Two trajectories are duplicates when they ran the same commands and wrote the same report."""
    commands = [t.command for t in traj.turns if t.action == "command"]
    blob = json.dumps([traj.task_id, commands, traj.report], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_progress(out: Path) -> tuple[set[str], set[str]]:
    """(task ids already finished, dedup keys already written)."""
    done, keys = set(), set()
    prog = progress_path(out)
    if prog.exists():
        for line in prog.read_text().splitlines():
            if line.strip():
                try:
                    done.add(json.loads(line)["task_id"])
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a crash: that task simply runs again
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                try:
                    keys.add(json.loads(line)["provenance"]["dedup_key"])
                except (json.JSONDecodeError, KeyError):
                    continue
    return done, keys


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".progress.jsonl")


async def distill(cfg: Any, teacher: SubagentSpec, tasks: Sequence[Any], out_path: str | Path, *,
                  threshold: float = 0.7, samples: int = 1, concurrency: int = 4,
                  show_progress: bool = True, judge: Judge | None = None) -> dict[str, Any]:
    """Run, judge, filter, dedupe, append. Returns counts (also for the resumed part).
    `judge`: an open verdict seam (the training job's pool); default: cfg.judge, opened here."""
    from rollout.episode import run_episode
    from rollout.tokens import ChatFormat

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    await preflight(teacher, cfg)
    done, keys = read_progress(out)
    todo = [t for t in tasks if t.id not in done]
    stats = {"tasks": len(tasks), "skipped_done": len(tasks) - len(todo), "episodes": 0, "episode_errors": 0,
             "judge_errors": 0, "below_threshold": 0, "duplicates": 0, "kept": 0, "failed_tasks": []}
    if not todo:
        return stats
    close_judge = None
    if judge is None:
        judge, close_judge = open_judge(cfg, run_dir=str(out.parent))
    bar = _progress(len(todo), teacher.label) if show_progress else None
    lock = asyncio.Lock()
    gate = asyncio.Semaphore(concurrency)
    try:
        async with open_subagent(teacher, cfg, tasks=list(tasks)) as (engine, tokenizer):
            fmt = ChatFormat.of(tokenizer)

            async def one(task):
                async with gate:
                    trajs = await asyncio.gather(*(
                        run_episode(task, engine, tokenizer, cfg.rollout, fmt=fmt, group_id=task.id,
                                    seed=None if cfg.seed is None else cfg.seed + k,
                                    max_model_len=cfg.model.max_model_len) for k in range(samples)))
                    verdicts = await asyncio.gather(*(judge(task, tr) for tr in trajs))
                async with lock:  # one writer: lines never interleave, progress follows the data
                    _record(task, trajs, verdicts, teacher, cfg, threshold, keys, stats, out)
                    if bar:
                        bar.update(1)
            await asyncio.gather(*(one(t) for t in todo))
    finally:
        if bar:
            bar.close()
        if close_judge is not None:
            await close_judge()
    return stats


def _record(task, trajs, verdicts, teacher: SubagentSpec, cfg, threshold: float, keys: set[str],
            stats: dict[str, Any], out: Path) -> None:
    kept = errors = 0
    lines = []
    for tr, v in zip(trajs, verdicts):
        stats["episodes"] += 1
        if tr.error:
            errors += 1
            stats["episode_errors"] += 1
            continue
        if v.get("error") or v.get("score") is None:
            stats["judge_errors"] += 1
            continue
        if v["score"] < threshold:
            stats["below_threshold"] += 1
            continue
        key = dedup_key(tr)
        if key in keys:
            stats["duplicates"] += 1
            continue
        keys.add(key)
        tr.reward = v["score"]   # tr.verdict is the judge pool's full Verdict
        prov = {"teacher": {"label": teacher.label, "kind": teacher.kind, "model": teacher.model or teacher.path,
                            "base_url": teacher.base_url},
                "judge": v.get("judge", cfg.judge.backend), "verdict": v, "threshold": threshold,
                "task": {"id": task.id, "category": task.category, "project": task.project,
                         "language": task.language, "split": task.split},
                "dedup_key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        lines.append(json.dumps({"trajectory": tr.to_dict(), "provenance": prov}) + "\n")
        kept += 1
    stats["kept"] += kept
    if errors:
        stats["failed_tasks"].append({"task_id": task.id, "errors": errors,
                                      "first": next(t.error for t in trajs if t.error)[:200]})
    with out.open("a") as f:
        f.writelines(lines)
        f.flush()
    # Errored tasks are not marked done: a rerun retries them.
    if errors < len(trajs) or not trajs:
        with progress_path(out).open("a") as f:
            f.write(json.dumps({"task_id": task.id, "kept": kept, "episodes": len(trajs), "errors": errors}) + "\n")


def _progress(total: int, label: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"distill {label}", unit="task")


# --- the teacher inside `terminus train` (trainer.sft.teacher.kind=openai) ---------------------------

def teacher_subagent(cfg: Any) -> tuple[SubagentSpec, Any]:
    """(spec, run config) of the job's openai teacher: the run config with rollout.engine pointed at
    trainer.sft.teacher's endpoint, limits and sampling, so its episodes use the student's protocol,
    turn cap, sandbox and tokenizer (model.path)."""
    t = cfg.trainer.sft.teacher
    if not t.base_url or not t.model:
        raise ConfigError("trainer.sft.teacher.kind=openai needs trainer.sft.teacher.base_url and "
                          "trainer.sft.teacher.model (e.g. base_url=https://api.example.com/v1 model=big-model)")
    spec = SubagentSpec(f"openai:{t.model}", "openai", model=t.model, base_url=t.base_url, api=t.api)
    c = engine_config(spec, cfg)
    e = c.rollout.engine
    e.api_key_env, e.max_concurrency, e.max_retries = t.api_key_env, t.max_concurrency, t.max_retries
    e.requests_per_minute, e.tokens_per_minute, e.request_timeout_s = (t.requests_per_minute, t.tokens_per_minute,
                                                                       t.request_timeout_s)
    c.rollout.sampling.temperature, c.rollout.sampling.top_p = t.temperature, t.top_p
    c.rollout.sampling.constrain = t.constrain
    return spec, c


def teacher_will_play(cfg: Any) -> bool:
    """Whether this job runs the openai teacher: an SFT stage without trainer.sft.data, and not a run
    resumed past SFT (its teacher may be gone by then without harm)."""
    if "sft" not in cfg.trainer.stage or cfg.trainer.sft.data or cfg.trainer.sft.teacher.kind != "openai":
        return False
    ckpt = latest(checkpoint_root(cfg.output_dir)) if cfg.trainer.checkpoint.resume == "auto" else None
    return ckpt is None or read_state(ckpt).get("stage") != "grpo"


async def check_endpoints(cfg: Any) -> None:
    """Before a training job writes or starts anything: the openai teacher's and the openai judge's
    endpoints answer and serve their models (one line naming the key otherwise)."""
    checks = []
    if teacher_will_play(cfg):
        checks.append(("trainer.sft.teacher", *teacher_subagent(cfg)))
    j = cfg.judge
    if j.backend == "openai":
        if not j.base_url or not j.model_name:
            raise ConfigError("judge.backend=openai needs judge.base_url and judge.model_name")
        c = copy.deepcopy(cfg)
        OmegaConf.set_readonly(c, False)
        c.rollout.engine.api_key_env = j.api_key_env   # preflight reads the key from the engine's variable
        checks.append(("judge", SubagentSpec(f"openai:{j.model_name}", "openai", model=j.model_name,
                                             base_url=j.base_url), c))
    for key, spec, c in checks:
        try:
            await preflight(spec, c)
        except SubagentError as e:
            raise ConfigError(f"{key}: {e}") from None


async def teacher_demos(cfg: Any, tasks: Sequence[Any], judge: Judge, tokenizer: Any, out: Path
                        ) -> tuple[list, dict[str, Any]]:
    """SFT demonstrations from the openai teacher: `distill` into `out` (the run directory's
    teacher_demos.jsonl: the same lines, provenance included, as `terminus distill` writes; resumable),
    judged by the job's judge and kept at reward >= trainer.sft.teacher.min_reward; then read back
    as the student's trajectories. Returns (demos, counts)."""
    t = cfg.trainer.sft.teacher
    spec, c = teacher_subagent(cfg)
    stats = await distill(c, spec, tasks, out, threshold=t.min_reward, samples=t.samples,
                          concurrency=t.max_concurrency, show_progress=False, judge=judge)
    demos, loaded = load_demos(out, tokenizer) if out.exists() else ([], {"demos_failed": 0})
    counts = {"episodes": stats["episodes"], "kept": stats["kept"], "kept_total": len(demos),
              "kept_without_report": loaded["demos_failed"],   # kept by the judge, but nothing to imitate
              "below_threshold": stats["below_threshold"], "unjudgeable": stats["judge_errors"],
              "episode_errors": stats["episode_errors"], "duplicates": stats["duplicates"],
              "tasks_done_before": stats["skipped_done"]}
    counts["dropped"] = counts["episodes"] - counts["kept"]
    return demos, counts


def describe_teacher(cfg: Any, m: dict[str, Any]) -> str:
    """The teacher stage's console line: what was kept and why the rest was dropped."""
    t = cfg.trainer.sft.teacher
    done = f", {m['tasks_done_before']} tasks done before this run" if m["tasks_done_before"] else ""
    return (f"[sft] teacher openai:{t.model}: {m['episodes']} episodes, kept {m['kept']} (reward >= "
            f"trainer.sft.teacher.min_reward={t.min_reward:g}), dropped {m['dropped']}: {m['below_threshold']} below "
            f"it, {m['unjudgeable']} unjudgeable, {m['episode_errors']} episode errors, {m['duplicates']} "
            f"duplicates{done}; {m['kept_total']} trajectories to train on ({m['kept_without_report']} kept ones "
            f"without a report are not)")
