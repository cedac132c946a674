"""Trainer overhead: tokens/s of the FSDP2 trainer (Ray actors, gloo) against a plain single-process
transformers training loop on the same batch, in the same run.

    python benchmarks/trainer.py [--config tiny_cpu] [--steps 6] [--seqs 8] [--len 512] [key=value ...]

Prints tokens/s of: the plain loop, FSDP2 with 1 rank, FSDP2 with 2 ranks; and the ratio it is
judged by, FSDP2 (1 rank) / plain (target >= 0.85 on CPU). The first step of each is a warmup and
not timed. No GPU here, so no MFU figure (on a GPU machine run it with configs/qwen3_4b.yaml).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def batch(vocab: int, seqs: int, length: int, seed: int = 0) -> list[dict]:
    import torch
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(seqs):
        ids = torch.randint(0, vocab, (length,), generator=g).tolist()
        out.append({"token_ids": ids, "mask": [0] * (length // 4) + [1] * (length - length // 4)})
    return out


def plain_loop(model_path: str, samples: list[dict], steps: int, lr: float) -> float:
    """tokens/s of the textbook loop: forward, masked NLL, backward, clip, AdamW step."""
    import torch
    from transformers import AutoModelForCausalLM

    from rl.algos import pad_batch, sft_loss, shifted, token_logprobs
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ids, attn = pad_batch([s["token_ids"] for s in samples])
    mask = shifted([s["mask"] for s in samples], ids.shape[1])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        lp = token_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids)
        sft_loss(lp, mask).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    tokens = ids.numel()
    return tokens / (sum(times[1:]) / (steps - 1))


def fsdp(cfg, samples: list[dict], steps: int, world: int) -> float:
    from rl.group import TrainerGroup
    cfg.trainer.num_workers = world
    group = TrainerGroup(cfg)
    try:
        times = []
        norm = float(sum(sum(s["mask"][1:]) for s in samples))
        for _ in range(steps):
            t0 = time.perf_counter()
            group._train("sft", [samples], norm) if world == 1 else \
                group._train("sft", [samples[: len(samples) // 2], samples[len(samples) // 2:]], norm)
            times.append(time.perf_counter() - t0)
    finally:
        group.shutdown()
    return sum(len(s["token_ids"]) for s in samples) / (sum(times[1:]) / (steps - 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny_cpu")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--len", type=int, default=512)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import json

    import ray

    from terminus.config import load_config
    from terminus.model import resolve_model_path
    cfg = load_config(args.config, ["logging.wandb_mode=disabled", "output_dir=/tmp/terminus-bench-trainer",
                                    *args.overrides])
    path = str(resolve_model_path(cfg.model.path))
    vocab = json.load(open(os.path.join(path, "config.json")))["vocab_size"]
    samples = batch(vocab, args.seqs, args.len)
    plain = plain_loop(path, samples, args.steps, cfg.trainer.optim.lr)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        one = fsdp(cfg, samples, args.steps, 1)
        two = fsdp(cfg, samples, args.steps, 2)
    finally:
        ray.shutdown()
    print(f"batch: {args.seqs} x {args.len} tokens, {args.steps - 1} timed steps, {os.cpu_count()} CPUs")
    print(f"plain transformers loop : {plain:9.0f} tokens/s")
    print(f"FSDP2 trainer, 1 rank   : {one:9.0f} tokens/s")
    print(f"FSDP2 trainer, 2 ranks  : {two:9.0f} tokens/s")
    print(f"ratio FSDP2(1 rank) / plain = {one / plain:.2f}  (target >= 0.85)")
    print(f"ratio FSDP2(2 ranks) / plain = {two / plain:.2f}  (2 ranks share {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
