"""The first check for a GPU machine: the trainer's FSDP2 steps on a Qwen3-4B-shaped model and the
weight broadcast to a receiver process, with random bf16 weights (nothing is downloaded).

    python benchmarks/gpu.py                 # one or more GPUs: Qwen3-4B-Instruct-2507's shape, NCCL
    python benchmarks/gpu.py --small         # CPU: a small shape, gloo (tests/test_benchmark_gpu.py)
    python benchmarks/gpu.py --json out.json # also write the figures

Needs only torch and transformers (no vLLM, no Ray): run it from a checkout. Two phases, each in
fresh processes so the second starts with an empty GPU:

1. trainer: one process per GPU (--ranks), the model set up as rl/worker.py does it (fp32 master
   weights, `fully_shard` per decoder layer and at the root with bf16 compute and fp32 gradient
   reduction, activation checkpointing, AdamW), the same loss (rl.algos: logits kept only at trained
   positions, token-mean NLL). --steps optimizer steps of --micro-batches x --tokens tokens, the first
   untimed. Prints tokens/s, model TFLOP/s and MFU against the GPU's dense bf16 peak, peak memory.
   One difference: AdamW runs per tensor (foreach=False): the trainer's default (foreach) needs one
   more fp32 copy of the moments, 16 GB for 4B parameters, which one 80 GB GPU does not have.
2. broadcast: a sender holding the weights in bf16 (the wire dtype of rl/weight_sync.py, named as
   core.model.hf_weights names them) broadcasts every tensor to a receiver process over NCCL (gloo
   with --small), as trainer rank 0 does to the vLLM workers; the receiver checks every tensor's
   checksum. NCCL refuses two ranks on one GPU: with one GPU that refusal is printed, and the
   same-GPU path (CUDA IPC handles, rollout.engine.weight_transfer=ipc) is timed instead.

On one H100 it takes about 2-4 minutes (budget: 8). Figures go to stdout, prefixed [gpu], [trainer],
[broadcast].
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.model import PUBLISHED_SHAPES, ModelShape, hf_weights  # noqa: E402

SMALL = ModelShape(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                   max_position_embeddings=4096)
FULL = PUBLISHED_SHAPES["Qwen3-4B-Instruct-2507"]
# Dense bf16 peak FLOP/s by device name (vendor datasheets, SXM parts).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
BROADCAST_TIMEOUT_S = 240.0   # building a 4B model on each side and the transfer take well under this
TRAINED_FRACTION = 0.5   # of each sequence's positions: the rest is prompt and tool output, no logits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flops_per_token(shape: ModelShape, tokens: int, trained_fraction: float) -> float:
    """Model FLOPs of one trained token (forward + backward = 3 x forward; recomputation not counted):
    6 x the decoder layers' parameters, the causal attention (6 x layers x heads x head_dim x the
    sequence: half of 12 for the mask), and the LM head where logits are kept."""
    dense = 6 * shape.num_hidden_layers * shape.layer_params
    attention = 6 * shape.num_hidden_layers * shape.num_attention_heads * shape.head_dim * tokens
    head = 6 * shape.vocab_size * shape.hidden_size * trained_fraction
    return dense + attention + head


def peak_flops(device_name: str) -> float:
    return next((v for k, v in PEAK_BF16.items() if k in device_name), 0.0)


def build_model(shape: ModelShape, device, dtype):
    """Qwen3ForCausalLM of `shape` with random weights, made directly on `device`."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**dataclasses.asdict(shape), attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    return model.to(dtype)


def _init(rank: int, world: int, port: int, cuda: bool, device_index: int):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if cuda:
        torch.cuda.set_device(device_index)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    return torch.device("cuda", device_index) if cuda else torch.device("cpu")


# ---- phase 1: trainer steps ------------------------------------------------------------------------


def trainer_rank(rank: int, world: int, port: int, args: argparse.Namespace, out) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from rl.algos import positions_to_keep, sft_loss, shifted, token_logprobs

    cuda = not args.small
    device = _init(rank, world, port, cuda, rank)
    shape = SMALL if args.small else FULL
    t0 = time.perf_counter()
    model = build_model(shape, device, torch.float32)   # fp32 master weights, as rl/worker.py
    model.gradient_checkpointing_enable()
    mesh = init_device_mesh(device.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    optim = torch.optim.AdamW(model.parameters(), lr=args.lr, foreach=False)
    setup_s = time.perf_counter() - t0
    # The same batch every step: the loss must fall, which shows the steps train.
    g = torch.Generator().manual_seed(rank)
    prompt = int(args.tokens * (1 - TRAINED_FRACTION))
    batches = []
    for _ in range(args.micro_batches):
        ids = torch.randint(0, shape.vocab_size, (1, args.tokens), generator=g)
        mask = shifted([[0] * prompt + [1] * (args.tokens - prompt)], args.tokens)
        batches.append((ids.to(device), mask.to(device)))
    times, losses = [], []
    try:
        for step in range(args.steps):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            optim.zero_grad(set_to_none=True)
            total = 0.0
            for ids, mask in batches:
                keep = positions_to_keep(mask)
                logits = model(input_ids=ids, logits_to_keep=keep).logits
                loss = sft_loss(token_logprobs(logits, ids, keep), mask) / len(batches)
                loss.backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            losses.append(total)
            if rank == 0:
                print(f"[trainer] step {step + 1}/{args.steps}: {times[-1]:.2f} s, loss {total:.4f}", flush=True)
    except torch.cuda.OutOfMemoryError as e:   # report it, and still run phase 2
        if rank == 0:
            out.put({"error": f"out of memory at step {len(times) + 1}: {str(e).splitlines()[0]}"})
        dist.destroy_process_group()
        return
    timed = times[1:] or times
    tokens_per_s = args.micro_batches * args.tokens * world / (sum(timed) / len(timed))
    figures = {"ranks": world, "backend": dist.get_backend(), "params": sum(p.numel() for p in model.parameters()),
               "tokens_per_step": args.micro_batches * args.tokens * world, "step_s": timed,
               "setup_s": setup_s, "losses": losses, "tokens_per_s": tokens_per_s}
    if cuda:
        figures["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        figures["device"] = torch.cuda.get_device_name()
    if rank == 0:
        out.put(figures)
    dist.destroy_process_group()


def run_trainer(args: argparse.Namespace, ctx) -> dict:
    import torch.multiprocessing as mp

    out = ctx.SimpleQueue()
    try:
        mp.start_processes(trainer_rank, args=(args.ranks, free_port(), args, out), nprocs=args.ranks,
                           start_method="spawn")
    except Exception as e:   # a rank failed: say so, and still run the broadcast
        print(f"[trainer] failed: {e}", flush=True)
        return {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    figures = out.get()
    shape = SMALL if args.small else FULL
    if "error" in figures:
        print(f"[trainer] {figures['error']}", flush=True)
        return figures
    flops = flops_per_token(shape, args.tokens, TRAINED_FRACTION) * figures["tokens_per_s"]
    figures["model_tflops"] = flops / 1e12
    peak = peak_flops(figures.get("device", "")) * args.ranks
    figures["mfu"] = flops / peak if peak else None
    print(f"[trainer] {figures['params'] / 1e6:.1f} M parameters on {args.ranks} rank(s) ({figures['backend']}), "
          f"{figures['tokens_per_step']} tokens per step, setup {figures['setup_s']:.1f} s", flush=True)
    mfu = f", MFU {100 * figures['mfu']:.1f}% of {peak / 1e12:.0f} TFLOP/s" if figures["mfu"] else ""
    mem = f", peak memory {figures['peak_memory_gib']:.1f} GiB per GPU" if "peak_memory_gib" in figures else ""
    print(f"[trainer] {figures['tokens_per_s']:.0f} tokens/s, {figures['model_tflops']:.1f} model TFLOP/s{mfu}{mem}; "
          f"loss {figures['losses'][0]:.4f} -> {figures['losses'][-1]:.4f}", flush=True)
    return figures


# ---- phase 2: weight broadcast ---------------------------------------------------------------------


def _named(model):
    return list(hf_weights(model.named_parameters(), tie_word_embeddings=model.config.tie_word_embeddings))


def _checksums(tensors) -> list[float]:
    return [float(t.double().sum()) for t in tensors]


def broadcast_rank(rank: int, port: int, args: argparse.Namespace, device_index: int, out) -> None:
    """Rank 0 sends every tensor (bf16) with dist.broadcast, rank 1 receives into its own buffers."""
    import torch
    import torch.distributed as dist

    cuda = not args.small
    try:
        device = _init(rank, 2, port, cuda, device_index)
        shape = SMALL if args.small else FULL
        if rank == 0:
            tensors = [p.detach() for _, p in _named(build_model(shape, device, torch.bfloat16))]
        else:
            meta = build_model(shape, "meta", torch.bfloat16)
            tensors = [torch.empty(p.shape, dtype=torch.bfloat16, device=device) for _, p in _named(meta)]
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        for x in tensors:
            dist.broadcast(x, src=0)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        sums = torch.tensor(_checksums(tensors) if rank == 0 else [0.0] * len(tensors), dtype=torch.float64,
                            device=device)
        dist.broadcast(sums, src=0)
        if rank == 1:
            mine = _checksums(tensors)
            out.put({"tensors": len(tensors), "bytes": sum(x.numel() * x.element_size() for x in tensors),
                     "seconds": seconds, "verified": mine == sums.tolist(), "backend": dist.get_backend()})
        dist.destroy_process_group()
    except Exception as e:   # NCCL refusing two ranks on one GPU lands here
        out.put({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


def ipc_sender(args: argparse.Namespace, queue, done) -> None:
    """Same GPU: hand the receiver CUDA IPC handles of the weights (torch.multiprocessing shares CUDA
    tensors that way) and keep them alive until it has copied them."""
    import torch
    tensors = [p.detach() for _, p in _named(build_model(FULL, "cuda", torch.bfloat16))]
    sums = _checksums(tensors)
    torch.cuda.synchronize()
    queue.put("ready")                # the receiver's clock starts here: handles, then the copies
    queue.put((tensors, sums))
    done.get()


def ipc_receiver(args: argparse.Namespace, queue, done, out) -> None:
    import torch
    meta = build_model(FULL, "meta", torch.bfloat16)
    mine = [torch.empty(p.shape, dtype=torch.bfloat16, device="cuda") for _, p in _named(meta)]
    queue.get()   # "ready": the sender has built its weights
    t = time.perf_counter()
    theirs, sums = queue.get()
    for dst, src in zip(mine, theirs):
        dst.copy_(src)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    out.put({"tensors": len(mine), "bytes": sum(x.numel() * x.element_size() for x in mine), "seconds": seconds,
             "verified": _checksums(mine) == sums, "backend": "cuda-ipc (same GPU)"})
    done.put(True)


def _first(out, procs, timeout_s: float) -> dict:
    """The first result the processes put, or an error after timeout_s (a hung NCCL init); then
    the processes are joined, and killed if they hang."""
    import queue
    try:
        result = out.get(timeout=timeout_s)
    except queue.Empty:
        result = {"error": f"no result within {timeout_s:.0f} s"}
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return result


def run_broadcast(args: argparse.Namespace, ctx) -> dict:
    import torch
    gpus = 0 if args.small else torch.cuda.device_count()
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=broadcast_rank, args=(r, port, args, min(r, max(gpus - 1, 0)), out))
             for r in (0, 1)]
    for p in procs:
        p.start()
    result = _first(out, procs, BROADCAST_TIMEOUT_S)
    where = "gloo, CPU" if args.small else ("cuda:0 -> cuda:1" if gpus > 1 else "both on cuda:0")
    if "error" in result:
        print(f"[broadcast] NCCL ({where}) failed: {result['error']}", flush=True)
        if gpus != 1:
            return result
        print("[broadcast] one GPU: timing the same-GPU path, CUDA IPC handles, instead", flush=True)
        queue, done, out = ctx.SimpleQueue(), ctx.SimpleQueue(), ctx.Queue()   # no stale errors
        procs = [ctx.Process(target=ipc_sender, args=(args, queue, done)),
                 ctx.Process(target=ipc_receiver, args=(args, queue, done, out))]
        for p in procs:
            p.start()
        result = _first(out, procs, BROADCAST_TIMEOUT_S)
        if "error" in result:
            print(f"[broadcast] CUDA IPC failed: {result['error']}", flush=True)
            return result
        where = "cuda:0 -> cuda:0"
    gb = result["bytes"] / 1e9
    result["gb_per_s"] = gb / result["seconds"]
    print(f"[broadcast] {result['backend']} ({where}): {result['tensors']} tensors, {gb:.2f} GB in "
          f"{result['seconds']:.2f} s = {result['gb_per_s']:.1f} GB/s; checksums "
          f"{'match' if result['verified'] else 'DIFFER'}", flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU, a small shape, gloo (the test)")
    ap.add_argument("--ranks", type=int, default=0, help="trainer ranks (default: every GPU; 2 with --small)")
    ap.add_argument("--steps", type=int, default=0, help="optimizer steps, the first untimed (default 6; 4 small)")
    ap.add_argument("--micro-batches", type=int, default=2, help="micro-batches per step and rank")
    ap.add_argument("--tokens", type=int, default=0, help="tokens per micro-batch (default 4096; 128 small)")
    ap.add_argument("--lr", type=float, default=0.0, help="AdamW lr (default 1e-5; 1e-3 small)")
    ap.add_argument("--skip-trainer", action="store_true")
    ap.add_argument("--skip-broadcast", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = ap.parse_args()
    import torch
    import torch.multiprocessing as mp
    import transformers

    if not args.small and not torch.cuda.is_available():
        print("[gpu] no CUDA GPU here: skipped (--small runs the CPU check)", flush=True)
        return 0
    args.ranks = args.ranks or (2 if args.small else torch.cuda.device_count())
    args.steps = args.steps or (4 if args.small else 6)
    args.tokens = args.tokens or (128 if args.small else 4096)
    args.lr = args.lr or (1e-3 if args.small else 1e-5)
    device = "CPU" if args.small else f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}"
    print(f"[gpu] {device}, torch {torch.__version__}, transformers {transformers.__version__}", flush=True)
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    figures = {"device": device, "small": args.small}
    if not args.skip_trainer:
        figures["trainer"] = run_trainer(args, ctx)
    if not args.skip_broadcast:
        figures["broadcast"] = run_broadcast(args, ctx)
    figures["wall_s"] = time.perf_counter() - t0
    print(f"[gpu] done in {figures['wall_s']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1, default=str)
    return 1 if any("error" in figures.get(k, {}) for k in ("trainer", "broadcast")) else 0


if __name__ == "__main__":
    sys.exit(main())
