"""Eval results as a markdown table and PNG plots (matplotlib, Agg), from the JSON eval writes,
so runs can be re-rendered and compared (`terminus eval --compare a.json b.json`); and a training
run's rewards.png (plot_rewards: GRPO reward per step, held-out reward per stage)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

COLUMNS = [("episodes", "episodes"), ("failed", "failed"), ("score", "judge score"), ("fact_accuracy", "fact acc"),
           ("report_rate", "reported"), ("turns", "turns"), ("report_tokens", "report tok"),
           ("output_tokens_read", "output tok read"), ("compression", "compression"), ("latency_s", "latency s")]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def markdown_table(summaries: dict[str, dict[str, Any]]) -> str:
    """One row per subagent: headline metrics, then per-dimension scores, then failure-mode rates."""
    dims = sorted({d for s in summaries.values() for d in s["dimensions"]})
    modes = sorted({m for s in summaries.values() for m in s["failure_mode_rates"]})
    head = ["subagent"] + [c[1] for c in COLUMNS] + [f"dim:{d}" for d in dims] + [f"fail:{m}" for m in modes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summaries.items():
        cells = [name] + [_fmt(s[k]) for k, _ in COLUMNS] + [_fmt(s["dimensions"].get(d)) for d in dims] + \
                [_fmt(s["failure_mode_rates"].get(m, 0.0)) for m in modes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bars(ax, names: list[str], groups: dict[str, list[float]], title: str) -> None:
    import numpy as np
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(names))
    for i, n in enumerate(names):
        ax.bar(x + i * width, [groups[g][i] for g in groups], width, label=n)
    ax.set_xticks(x + width * (len(names) - 1) / 2, list(groups), rotation=20, ha="right")
    ax.set_title(title)
    ax.legend(fontsize=7)


def write_plots(summaries: dict[str, dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """quality.png (score, facts, dimensions), failures.png (failure-mode rates), cost.png (turns,
    report tokens, compression, latency). Returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(summaries)

    def val(s, k):
        return float(s.get(k) or 0.0)
    dims = sorted({d for s in summaries.values() for d in s["dimensions"]})
    quality = {"judge score": [val(summaries[n], "score") for n in names],
               "fact accuracy": [val(summaries[n], "fact_accuracy") for n in names],
               "reported": [val(summaries[n], "report_rate") for n in names]}
    quality.update({d: [float(summaries[n]["dimensions"].get(d) or 0.0) for n in names] for d in dims})
    modes = sorted({m for s in summaries.values() for m in s["failure_mode_rates"]}) or ["(none)"]
    failures = {m: [float(summaries[n]["failure_mode_rates"].get(m, 0.0)) for n in names] for m in modes}
    paths = []
    for fname, groups, title in (("quality.png", quality, "quality (higher is better; judge score = reward)"),
                                 ("failures.png", failures, "failure-mode rate per episode")):
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 4))
        _bars(ax, names, groups, title)
        ax.set_ylim(min([0.0] + [v for vals in groups.values() for v in vals]) - 0.05, 1.05)  # rewards go below 0
        fig.tight_layout()
        fig.savefig(out / fname, dpi=80)
        plt.close(fig)
        paths.append(out / fname)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.5))
    for ax, (k, title) in zip(axes, (("turns", "turns used"), ("report_tokens", "report tokens"),
                                     ("compression", "compression (read/report)"), ("latency_s", "latency (s)"))):
        ax.bar(names, [val(summaries[n], k) for n in names], color=[f"C{i}" for i in range(len(names))])
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=80)
    plt.close(fig)
    paths.append(out / "cost.png")
    return paths


def plot_rewards(run_dir: Path, grpo_steps: list[dict], evals: dict[str, dict]) -> Path:
    """PNG: the GRPO training reward per step, and held-out reward at each evaluation (with noise)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([m["step"] for m in grpo_steps], [m.get("reward_mean", float("nan")) for m in grpo_steps], marker="o")
    a.set(title="GRPO: mean reward of the step's rollouts", xlabel="step", ylabel="reward")
    names = list(evals)
    b.errorbar(range(len(names)), [evals[n]["reward_mean"] for n in names],
               yerr=[evals[n]["reward_sem"] for n in names], marker="o", capsize=4)
    b.set_xticks(range(len(names)), names)
    b.set(title="held-out tasks: mean reward (± standard error)", ylabel="reward")
    fig.tight_layout()
    out = run_dir / "rewards.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
