"""Yields of a manifest build: per language and per kind, exclusions by reason, build time per
project, and the projected time of a whole manifest on this machine and on a bigger cluster.

    .venv/bin/python scripts/corpus_yield.py CORPUS_DIR --manifest tasks/manifests/paper.jsonl \\
        --wall-min 42 --jobs 2 --cluster-cpus 64

Reads CORPUS_DIR/corpus.json (written by `terminus tasks build`) and the per-project records in
CORPUS_DIR/.projects (their build seconds). The projection scales the sample's measured CPU-time
(sum of per-project build seconds) to the manifest's size: wall = cpu / parallel projects.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus")
    ap.add_argument("--manifest", default="", help="the whole manifest the sample came from (for the projection)")
    ap.add_argument("--wall-min", type=float, default=0.0, help="the sample build's measured wall time, minutes")
    ap.add_argument("--jobs", type=int, default=2, help="projects the sample built at once")
    ap.add_argument("--cluster-cpus", type=int, default=64)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    records = [json.loads(p.read_text()) for p in sorted((corpus / ".projects").glob("*.json"))]
    per_lang: dict[str, Counter] = defaultdict(Counter)
    kinds: dict[str, Counter] = defaultdict(Counter)
    reasons: dict[str, Counter] = defaultdict(Counter)
    seconds = []
    for r in records:
        lang = group(r["entry"])
        per_lang[lang]["projects"] += 1
        seconds.append(r["duration_s"])
        if r["excluded"]:
            reasons[lang][r["excluded"].split(":", 1)[0]] += 1
            continue
        per_lang[lang]["built"] += 1
        per_lang[lang]["tasks"] += len(r["tasks"])
        for t in r["tasks"]:
            kinds[lang][t["category"]] += 1
    all_kinds = sorted({k for c in kinds.values() for k in c})
    print(f"{'language':18s} {'projects':>8s} {'built':>6s} {'yield':>6s} {'tasks':>6s} {'t/proj':>6s}  "
          + " ".join(f"{k:>14s}" for k in all_kinds) + "  excluded by reason")
    total = Counter()
    for lang in sorted(per_lang):
        c = per_lang[lang]
        total.update(c)
        print(f"{lang:18s} {c['projects']:8d} {c['built']:6d} {c['built'] / c['projects']:6.0%} {c['tasks']:6d} "
              f"{c['tasks'] / c['projects']:6.2f}  " + " ".join(f"{kinds[lang][k]:14d}" for k in all_kinds)
              + "  " + ", ".join(f"{k} {n}" for k, n in reasons[lang].most_common()))
    print(f"{'all':18s} {total['projects']:8d} {total['built']:6d} {total['built'] / max(1, total['projects']):6.0%} "
          f"{total['tasks']:6d} {total['tasks'] / max(1, total['projects']):6.2f}  "
          + " ".join(f"{sum(kinds[lang][k] for lang in kinds):14d}" for k in all_kinds))
    seconds.sort()
    cpu = sum(seconds)
    print(f"build seconds per project: median {seconds[len(seconds) // 2]:.0f}, p90 {seconds[int(0.9 * len(seconds))]:.0f}, "
          f"max {seconds[-1]:.0f}; sum {cpu / 60:.0f} min" + (f"; sample wall {args.wall_min:.0f} min with --jobs {args.jobs}"
                                                             if args.wall_min else ""))
    if args.manifest:   # per group (language and source): its measured tasks and seconds per project x its size
        entries = [json.loads(line) for line in Path(args.manifest).read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
        sizes = Counter(group(e) for e in entries)
        secs = defaultdict(float)
        for r in records:
            secs[group(r["entry"])] += r["duration_s"]
        tasks = sum(per_lang[g]["tasks"] / per_lang[g]["projects"] * n for g, n in sizes.items() if per_lang[g]["projects"])
        cpu_all = sum(secs[g] / per_lang[g]["projects"] * n for g, n in sizes.items() if per_lang[g]["projects"])
        unsampled = [g for g in sizes if not per_lang[g]["projects"]]
        print(f"projection for the manifest's {len(entries)} projects, group by group ("
              + ", ".join(f"{g} {n}" for g, n in sorted(sizes.items())) + f"): {tasks:.0f} tasks; "
              f"{cpu_all / args.jobs / 3600:.1f} h on this machine (--jobs {args.jobs}), "
              f"{cpu_all / args.cluster_cpus / 3600:.1f} h on {args.cluster_cpus} cores (one project per core)"
              + (f"; not in the sample: {', '.join(unsampled)}" if unsampled else ""))
    return 0


def group(entry: dict) -> str:
    """A project's language and, for the registries, its source: their yields differ."""
    return entry["language"] + {"npm": " (npm)", "pypi": " (pypi)"}.get(entry["ecosystem"], "")


if __name__ == "__main__":
    raise SystemExit(main())
