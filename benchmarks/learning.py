"""Does training make the subagent better? The embedded default, end to end, over several seeds.

    python benchmarks/learning.py [--seeds 0 1 2] [--config tiny_cpu] [--out runs/learning] [key=value ...]

Runs `terminus train` once per seed (one after another: each run takes the whole machine) and
prints, per stage (untrained, SFT, GRPO): the mean held-out reward over runs and its spread between
runs, exact-fact accuracy (share of held-out episodes whose report states every ground-truth fact
and no false one), the held-out family (transfer, no target) and the wall time of each stage; then
the paired GRPO - SFT margin per run with its standard error. It is how a change to the algorithm
is judged. The figures it is judged by (issue "Learning you can see"):
    GRPO - SFT >= 3 standard errors of the difference in every run;
    mean GRPO - SFT margin >= 2 x the run-to-run spread;
    exact-fact accuracy: GRPO - SFT >= 15 points;
    training (SFT + GRPO) at most 15 minutes on a 2-core machine, peak memory under 6 GiB.
A finished run directory is reused (its summary.json), so an interrupted benchmark resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_seed(config: str, seed: int, out: Path, overrides: list[str]) -> dict:
    summary = out / "summary.json"
    if not summary.exists():
        cmd = [sys.executable, "-m", "terminus.cli", "train", "--config", config, f"seed={seed}",
               f"output_dir={out}", *overrides]
        print(f"[learning] seed {seed}: {' '.join(cmd[2:])}", flush=True)
        with open(out.with_suffix(".log"), "w") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}).returncode
        if rc != 0 or not summary.exists():
            raise SystemExit(f"[learning] seed {seed} failed (exit {rc}); its log: {out.with_suffix('.log')}")
    return json.loads(summary.read_text())


def table(runs: dict[str, dict]) -> str:
    from evaluation.heldout import EVALUATED, across_runs, stage_seconds

    def mean(xs):
        xs = [x for x in xs if x == x]
        return statistics.fmean(xs) if xs else float("nan")

    noise = across_runs({k: s["evals"] for k, s in runs.items()})
    lines = [f"{'stage':10s} {'held-out reward':>16s} {'spread':>8s} {'exact facts':>12s} {'held-out family':>16s} "
             f"{'exact':>6s} {'wall (min)':>10s}"]
    for stage in EVALUATED:
        st = noise["stages"].get(stage)
        if not st:
            continue
        exact = mean([s["evals"][stage].get("exact_fact_rate", float("nan")) for s in runs.values() if stage in s["evals"]])
        tr = [s.get("transfer", {}).get(stage) for s in runs.values()]
        tr_r = mean([t["reward_mean"] for t in tr if t])
        tr_x = mean([t["exact_fact_rate"] for t in tr if t])
        wall = mean([stage_seconds(s.get("wall_s", {}), stage) / 60 for s in runs.values()])
        lines.append(f"{stage:10s} {st['mean']:+16.3f} {st['std_between_runs']:8.3f} {exact:12.0%} {tr_r:+16.3f} "
                     f"{tr_x:6.0%} {wall:10.1f}")
    lines.append("")
    for name, s in runs.items():
        imp = s.get("improvements", {}).get("grpo-sft")
        e = s["evals"]
        if imp:
            dx = e["grpo"].get("exact_fact_rate", float("nan")) - e["sft"].get("exact_fact_rate", float("nan"))
            lines.append(f"{name}: GRPO - SFT {imp['diff']:+.3f} (SE {imp['se']:.3f}, {imp['z']:+.1f} SE); exact facts "
                         f"{dx * 100:+.0f} points; total {s.get('wall_s', {}).get('total', 0) / 60:.1f} min, peak "
                         f"{s.get('peak_memory_gib', 0):.1f} GiB")
    for name, c in noise["comparisons"].items():
        lines.append(f"{name}: margin {c['margin']:+.3f} = {c['margin_over_noise']:.1f} x the run-to-run spread "
                     f"({c['noise']:.3f}); paired {c['diff_mean']:+.3f} (SE {c['diff_sem']:.3f}), positive in "
                     f"{c['positive']} of {c['runs']}")
    lines += targets(runs, noise)
    return "\n".join(lines)


def targets(runs: dict[str, dict], noise: dict) -> list[str]:
    """The figures the embedded default is judged by (module docstring), each met or not."""
    zs, exact = [], []
    for s in runs.values():
        imp, e = s.get("improvements", {}).get("grpo-sft"), s["evals"]
        if imp and "grpo" in e and "sft" in e:
            zs.append(imp["z"])
            exact.append((e["grpo"]["exact_fact_rate"] - e["sft"]["exact_fact_rate"]) * 100)
    from evaluation.heldout import training_seconds
    wall = [s.get("wall_s", {}) for s in runs.values()]
    train_min = [training_seconds(w) / 60 for w in wall]
    total_min = [w.get("total", 0.0) / 60 for w in wall]
    peak = [s.get("peak_memory_gib", 0.0) for s in runs.values()]
    c = noise["comparisons"].get("grpo-sft")
    if not zs or not c:
        return []
    ratio = c["margin_over_noise"]
    verdict = {True: "met", False: "NOT met"}
    return ["targets:",
            f"  GRPO - SFT >= 3 SE in every run: {verdict[min(zs) >= 3]} ({', '.join(f'{z:+.1f}' for z in zs)})",
            f"  margin >= 2 x the run-to-run spread: {verdict[ratio >= 2]} ({ratio:.1f}x)" if not math.isnan(ratio) else
            "  margin >= 2 x the run-to-run spread: needs two runs or more",
            f"  exact facts GRPO - SFT >= 15 points (mean of runs): {verdict[statistics.fmean(exact) >= 15]} "
            f"({statistics.fmean(exact):+.0f}; per run {', '.join(f'{x:+.0f}' for x in exact)})",
            f"  training (SFT + GRPO) <= 15 min in every run: {verdict[max(train_min) <= 15]} "
            f"({', '.join(f'{m:.1f}' for m in train_min)}; whole runs {', '.join(f'{m:.1f}' for m in total_min)} min)",
            f"  peak memory < 6 GiB: {verdict[max(peak) < 6]} ({max(peak):.1f} GiB at most)"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", default="tiny_cpu")
    p.add_argument("--out", default="runs/learning")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value) for every run")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {f"seed{s}": run_seed(args.config, s, out / f"seed{s}", args.overrides) for s in args.seeds}
    print(table(runs), flush=True)


if __name__ == "__main__":
    main()
