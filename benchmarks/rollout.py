"""Agent-loop efficiency: generated tokens/s in full episodes vs plain vLLM generation, one engine.

In ONE run on the SAME vLLM engine actor:
  1. `--episodes` concurrent episodes (default 64) of the configured model on tasks, with real
     sandboxes, parsing and observations (sampling.constrain=protocol by default, so the untrained
     tiny model writes commands that really run);
  2. plain generation of the same sequences, two ways (ignore_eos + min_tokens force the lengths):
     a. per turn (the ratio judged): each turn's generation is a sequence; wave k sends, for every
        episode with a k-th turn, that turn's exact prompt (the episode's tokens up to it) and asks
        for as many tokens as the turn generated; waves run one after another, as turns do. What
        the episodes take beyond this is the agent loop's own cost: sandboxes, commands, parsing,
        observations, scheduling between turns;
     b. per episode: one request per episode from its initial prompt, as many tokens as the whole
        episode generated, all at once. This also charges the loop for the turn structure itself:
        with a tiny model a decode step costs about the same for 4 or 64 sequences, and each turn
        ends on its slowest sequence, so k turns take about k times the steps of one long sequence.
Prints the rates and the ratios (target for (a) >= 0.8 on the embedded default, 64 episodes, 2 cores).
The prefix cache is reset before each baseline, so neither reuses the episodes' KV blocks.

    python benchmarks/rollout.py [--config tiny_cpu] [--episodes 64] [--rounds 3] [--constrain protocol] [key=value ...]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def turn_prompts(traj) -> list[tuple[list[int], int]]:
    """(prompt ids, generated tokens) of each turn: the runs of mask 1 are the turns' generations."""
    out, i, ids, mask = [], 0, traj.token_ids, traj.response_mask
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            out.append((list(ids[:i]), j - i))
            i = j
        else:
            i += 1
    return out


async def plain_waves(engine, trajs, temperature: float) -> tuple[float, int]:
    """Generate every episode's turns as plain requests, one wave per turn index; (seconds, tokens)."""
    from rollout.engine.base import Sampling
    turns = [turn_prompts(t) for t in trajs]
    t0, total = time.perf_counter(), 0
    for k in range(max(len(ts) for ts in turns)):
        wave = [ts[k] for ts in turns if len(ts) > k]
        gens = await engine.generate_batch([p for p, _ in wave], [
            Sampling(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=temperature) for _, n in wave])
        assert [len(g.token_ids) for g in gens] == [n for _, n in wave]
        total += sum(n for _, n in wave)
    return time.perf_counter() - t0, total


def bench_tasks(k: int) -> list:
    """k episodes' tasks, cycling over the built-in training split."""
    from tasks import load_tasks
    tasks = load_tasks("builtin", "train")
    return [tasks[i % len(tasks)] for i in range(k)]


async def run(cfg, episodes: int, rounds: int) -> None:
    from rollout.engine.base import Sampling
    from rollout.engine import make_engine
    from core.protocol import initial_messages
    from rollout.worker import load_tokenizer, run_requests, summarize
    from core.model import resolve_model_path

    tokenizer = load_tokenizer(str(resolve_model_path(cfg.model.path)))
    engine = make_engine(cfg, actor=True)
    print(f"engine: {await engine.info()}")
    tasks = bench_tasks(episodes)
    # Warm up both paths (first requests compile kernels, first sandboxes touch the disk).
    await run_requests([(tasks[0], 4)], engine, tokenizer, cfg.rollout, seed=1, max_model_len=cfg.model.max_model_len)

    prompts = [tokenizer.apply_chat_template(initial_messages(t.request, cfg.rollout.sandbox.workdir,
                                                              cfg.rollout.episode.max_turns),
                                             tokenize=True, add_generation_prompt=True, return_dict=False)
               for t in tasks]
    # Rounds alternate episodes and their plain twin, so load from other processes hits both alike.
    ep_total_s = plain_total_s = waves_total_s = 0.0
    total = 0
    for r in range(rounds):
        t0 = time.perf_counter()
        groups = await run_requests([(t, 1) for t in tasks], engine, tokenizer, cfg.rollout, seed=2 + r,
                                    max_concurrent=episodes, max_model_len=cfg.model.max_model_len)
        episode_s = time.perf_counter() - t0
        trajs = [g[0] for g in groups]
        m = summarize(trajs)
        lengths = [sum(t.response_mask) for t in trajs]
        sampling = [Sampling(max_tokens=n, min_tokens=n, ignore_eos=True,
                             temperature=cfg.rollout.sampling.temperature) for n in lengths]
        await engine.reset_prefix_cache()
        waves_s, wave_tokens = await plain_waves(engine, trajs, cfg.rollout.sampling.temperature)
        assert wave_tokens == sum(lengths)
        await engine.reset_prefix_cache()
        t0 = time.perf_counter()
        plain = await engine.generate_batch(prompts, sampling)
        plain_s = time.perf_counter() - t0
        assert [len(g.token_ids) for g in plain] == lengths
        await engine.reset_prefix_cache()

        n = sum(lengths)
        total += n
        ep_total_s += episode_s
        plain_total_s += plain_s
        waves_total_s += waves_s
        print(f"round {r + 1}: built-in tasks; {m['episodes']} concurrent episodes, failed {m['failed']} "
              f"{m['failures']}, finish {m['finish_reasons']}")
        print(f"  turns {m['turns']} ({m['turns_per_episode']:.2f}/episode), format errors {m['format_errors']}, "
              f"commands run {sum(x.action == 'command' for t in trajs for x in t.turns)}, "
              f"sandbox exec {m['exec_time_s']:.1f} s (summed)")
        appended = sum(len(t.token_ids) - t.prompt_len for t in trajs) - n
        print(f"  generated tokens {n} (per episode {min(lengths)}..{max(lengths)}); extra prefill in episodes "
              f"{appended} observation/template tokens ({appended / n:.2f} per generated token)")
        print(f"  episodes {episode_s:6.2f} s {n / episode_s:8.1f} tok/s | plain per turn {waves_s:6.2f} s "
              f"{n / waves_s:8.1f} tok/s (ratio {waves_s / episode_s:.3f}) | plain per episode {plain_s:6.2f} s "
              f"{n / plain_s:8.1f} tok/s (ratio {plain_s / episode_s:.3f})")
    ep_rate, waves_rate, plain_rate = total / ep_total_s, total / waves_total_s, total / plain_total_s
    print(f"episodes (full agent loop):          {ep_rate:8.1f} generated tok/s")
    print(f"plain vLLM, the same turns in waves: {waves_rate:8.1f} generated tok/s")
    print(f"plain vLLM, one sequence per episode: {plain_rate:7.1f} generated tok/s")
    print(f"agent-loop efficiency (episodes / plain per turn): {ep_rate / waves_rate:.3f}  (target >= 0.8)")
    print(f"episodes / plain per episode (turn structure included): {ep_rate / plain_rate:.3f}")
    engine.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny_cpu")
    ap.add_argument("--episodes", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="alternating episode/plain rounds")
    ap.add_argument("--constrain", default="protocol", choices=["protocol", "none"])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import ray

    from core.raycluster import init_ray
    from terminus.config import load_config
    cfg = load_config(args.config, [f"rollout.sampling.constrain={args.constrain}", *args.overrides])
    init_ray(log_to_driver=bool(os.environ.get("BENCH_VERBOSE")))
    try:
        asyncio.run(run(cfg, args.episodes, args.rounds))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
