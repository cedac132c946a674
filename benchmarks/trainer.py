"""Trainer overhead: tokens/s of the FSDP2 trainer (Ray actors, gloo) against a plain single-process
transformers training loop on the same batch, in the same run.

    python benchmarks/trainer.py [--config tiny_cpu] [--steps 6] [--seqs 8] [--len 512] [key=value ...]

Prints tokens/s of: the plain loop, FSDP2 with 1 rank, FSDP2 with 2 ranks; and the ratio it is
judged by, FSDP2 (1 rank) / plain (target >= 0.85 on CPU). Then, on a batch of varied lengths like
real episodes (--varied, sorted into micro-batches of 4 as GRPO does), padded micro-batches against
trainer.pad_free=true (one unpadded sequence per forward): the ratio pad_free / padded is what the
embedded default's pad_free is judged by (target > 1: it must pay to be on; 1.25 measured here
with --len 1024). The first step of each is a warmup and not timed. No GPU here, so no MFU figure
(on a GPU machine run it with configs/qwen3_4b.yaml).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def batch(vocab: int, seqs: int, length: int, seed: int = 0, varied: bool = False) -> list[dict]:
    """`seqs` random sequences of `length` tokens, or (varied) of lengths spread over length/2..2*length."""
    import torch
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(seqs):
        n = length // 2 + (i * 3 * length // 2) // max(1, seqs - 1) if varied else length
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append({"token_ids": ids, "mask": [0] * (n // 4) + [1] * (n - n // 4)})
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


def fsdp(cfg, samples: list[dict], steps: int, world: int, micro_batch: int = 0) -> float:
    """tokens/s of one optimizer step over `samples`: one micro-batch per rank, or (micro_batch > 0)
    micro-batches of that many sequences, longest first."""
    from rl.algos import loss_normaliser
    from rl.group import TrainerGroup
    from rl.worker import SFTStep
    cfg.trainer.num_workers = world
    group = TrainerGroup(cfg)
    if micro_batch:
        ordered = sorted(samples, key=lambda s: -len(s["token_ids"]))
        mbs = [ordered[i:i + micro_batch] for i in range(0, len(ordered), micro_batch)]
    else:
        mbs = [samples] if world == 1 else [samples[: len(samples) // 2], samples[len(samples) // 2:]]
    try:
        times = []
        step = SFTStep(mbs, loss_normaliser([s["mask"] for s in samples], "token_mean"))
        for _ in range(steps):
            t0 = time.perf_counter()
            group._train(step)
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
    ap.add_argument("--varied", type=int, default=16, help="sequences in the varied-length batch (0: skip)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import json

    import ray

    from core.raycluster import init_ray
    from terminus.config import load_config
    from core.model import resolve_model_path
    cfg = load_config(args.config, ["logging.wandb_mode=disabled", "output_dir=/tmp/terminus-bench-trainer",
                                    *args.overrides])
    path = str(resolve_model_path(cfg.model.path))
    vocab = json.load(open(os.path.join(path, "config.json")))["vocab_size"]
    samples = batch(vocab, args.seqs, args.len)
    varied = batch(vocab, args.varied, args.len, varied=True)
    plain = plain_loop(path, samples, args.steps, cfg.trainer.optim.lr)
    init_ray(num_cpus=4, log_to_driver=False)
    try:
        cfg.trainer.pad_free = False
        one = fsdp(cfg, samples, args.steps, 1)
        two = fsdp(cfg, samples, args.steps, 2)
        if args.varied:
            padded = fsdp(cfg, varied, args.steps, 1, micro_batch=4)
            cfg.trainer.pad_free = True
            unpadded = fsdp(cfg, varied, args.steps, 1, micro_batch=4)
    finally:
        ray.shutdown()
    print(f"batch: {args.seqs} x {args.len} tokens, {args.steps - 1} timed steps, {os.cpu_count()} CPUs")
    print(f"plain transformers loop : {plain:9.0f} tokens/s")
    print(f"FSDP2 trainer, 1 rank   : {one:9.0f} tokens/s")
    print(f"FSDP2 trainer, 2 ranks  : {two:9.0f} tokens/s")
    print(f"ratio FSDP2(1 rank) / plain = {one / plain:.2f}  (target >= 0.85)")
    print(f"ratio FSDP2(2 ranks) / plain = {two / plain:.2f}  (2 ranks share {os.cpu_count()} cores)")
    if args.varied:
        lengths = [len(s["token_ids"]) for s in varied]
        print(f"varied batch: {args.varied} sequences of {min(lengths)}-{max(lengths)} tokens, micro-batches of 4")
        print(f"padded micro-batches    : {padded:9.0f} tokens/s")
        print(f"trainer.pad_free=true   : {unpadded:9.0f} tokens/s")
        print(f"ratio pad_free / padded = {unpadded / padded:.2f}  (target > 1 on CPU)")


if __name__ == "__main__":
    main()
