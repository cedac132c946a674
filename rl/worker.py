"""One FSDP2 trainer rank: a Ray actor holding a shard of the policy, its optimizer and scheduler.

Each rank joins a torch.distributed process group (gloo on CPU, NCCL on GPU), loads the model from
an HF directory, and shards it with `fully_shard` per decoder layer and at the root. The driver-side
TrainerGroup (rl/group.py) gives every rank its slice of a batch; ranks run the same number of
micro-batches, FSDP averages gradients across ranks, and every optimizer step is one `train` call.

Self-contained: a rank is given the `trainer` and `model` sections of the config and nothing else;
whatever a step needs beyond them (the loss normaliser, the distribution the rollouts were sampled from) comes
with the step (SFTStep, GRPOStep), so what the ranks train on is what the driver sent.

Loss normalisation: each rank divides its token sum by the step's GLOBAL normaliser
(algos.loss_normaliser, computed by the driver over the whole step) and multiplies by the world size
(FSDP's reduce averages), so the update equals single-process training on the whole batch.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError
from core.net import free_port
from rl import algos


def attention_implementation(requested: str, cuda: bool) -> str:
    """The trainer's attention kernels: sdpa on CPU; on GPU the configured ones, flash_attention_2 only
    where flash-attn is installed (its own extra: it builds from source against the installed torch)."""
    if not cuda:
        return "sdpa"
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError("trainer.attn_implementation=flash_attention_2 needs flash-attn, which is not installed: "
                          "pip install --no-build-isolation -e '.[flash-attn]' (docs/cli.md), or set "
                          "trainer.attn_implementation=sdpa")
    return requested


def freeze(model: torch.nn.Module, patterns: list[str]) -> None:
    """Leave the parameters whose names match any of `patterns` (regexes) out of training; each pattern
    must match some parameter (a typo would otherwise train everything)."""
    import re

    params = dict(model.named_parameters())
    for pattern in patterns:
        matched = [p for name, p in params.items() if re.search(pattern, name)]
        if not matched:
            raise ConfigError(f"trainer.frozen: {pattern!r} matches no parameter of the model "
                              f"(names look like {list(params)[1]!r})")
        for param in matched:
            param.requires_grad_(False)


@dataclass
class SFTStep:
    """One SFT optimizer step for one rank (or, before `TrainerGroup` deals it, for all ranks).

    micro_batches: samples (token_ids, mask: per-token lists aligned with token_ids); every rank gets
        the same number of micro-batches (FSDP collectives), possibly empty.
    norm: algos.loss_normaliser of the whole step (token_mean), the same on every rank.
    prefix: the tokens every sample of the step begins with (algos.shared_prefix; trainer.shared_prefix),
        the same on every rank: run once, not once per sample. [] = none.
    """
    micro_batches: list[list[dict]]
    norm: float
    prefix: list[int] = field(default_factory=list)


@dataclass
class GRPOStep:
    """One GRPO optimizer step: as SFTStep, samples with advantage, rollout_logprobs and optionally
    old_logprobs (aligned with token_ids), norm for the configured loss_agg, and the distribution the
    rollouts were sampled from (temperature, penalties): the trainer's logprobs are of it, as the
    rollout logprobs are (the rank has no rollout config to read it from). With penalties, samples
    carry `generated` (the trajectory's response mask: where each turn's output starts and ends)."""
    micro_batches: list[list[dict]]
    norm: float
    sampling: algos.RolloutSampling
    prefix: list[int] = field(default_factory=list)


class SharedPrefix:
    """The keys and values of a step's shared prefix (the system prompt: ~40% of the embedded default's
    tokens), computed by one forward that every sample's forward then reads as its cache: each sample
    runs only its own tokens. The gradient is the plain forward's: each sample's backward leaves the
    gradient of the prefix's keys and values on detached copies (`leaves`), and `backward` sends their
    sum through the prefix's forward once, after the last sample."""

    def __init__(self, model, tokens: list[int], device: torch.device, grad: bool):
        from transformers import DynamicCache
        self.tokens = tokens
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        with torch.set_grad_enabled(grad):
            out = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        self.kv = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        self.leaves = [t.detach().requires_grad_(grad) for t in self.kv]
        # FSDP unshards a layer's weights for its backward when the gradient of the layer's output
        # arrives (a hook on it); the keys' and values' gradients enter inside the layers, so the
        # backward also starts at the prefix's output, with a zero gradient: every layer's hook fires
        # before the gradient reaches its weights
        self.output = out.logits

    def starts(self, samples: list[dict]) -> bool:
        """Whether every sample begins with the prefix and has a token of its own (a filler does not)."""
        n = len(self.tokens)
        return all(len(s["token_ids"]) > n and list(s["token_ids"][:n]) == self.tokens for s in samples)

    def cache(self, batch: int):
        """A fresh cache holding the prefix for a batch of `batch` samples (the forward appends to it)."""
        from transformers import DynamicCache
        kv = [t.expand(batch, *t.shape[1:]) for t in self.leaves]
        return DynamicCache(ddp_cache_data=list(zip(kv[0::2], kv[1::2])))

    def backward(self) -> None:
        """The prefix's share of the gradient. Every rank calls it (FSDP's collectives), with zeros where
        no sample of its own read the prefix."""
        grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in self.leaves]
        torch.autograd.backward([*self.kv, self.output], [*grads, torch.zeros_like(self.output)])


# An empty micro-batch slot (a rank with fewer micro-batches than another) still runs a forward and
# backward, so the FSDP collectives stay in step: on this sequence, which trains no token.
FILLER = {"token_ids": [0, 0], "mask": [0, 0], "generated": [0, 0], "advantage": 0.0, "rollout_logprobs": [0.0, 0.0]}


class TrainerWorker:
    """Ray actor: one rank, configured by the trainer and model sections of the config (YAML)."""

    def __init__(self, trainer_yaml: str, model_yaml: str, rank: int, world_size: int):
        from omegaconf import OmegaConf
        self.tc = OmegaConf.create(trainer_yaml)    # cfg.trainer
        self.mc = OmegaConf.create(model_yaml)      # cfg.model
        self.rank, self.world_size = rank, world_size
        self.step = 0

    # -- setup ------------------------------------------------------------------------------------------
    def address(self) -> tuple[str, int]:
        import ray
        return ray.util.get_node_ip_address(), free_port("")

    def setup(self, master_addr: str, master_port: int, total_steps: int, seed: int) -> dict[str, Any]:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
        from transformers import AutoModelForCausalLM

        from core.model import resolve_model_path

        tc = self.tc
        cuda = torch.cuda.is_available()
        backend = tc.backend if tc.backend != "auto" else ("nccl" if cuda else "gloo")
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        torch.manual_seed(seed)
        self.model_path = resolve_model_path(self.mc.path)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=torch.float32,
            attn_implementation=attention_implementation(tc.attn_implementation, cuda)).to(self.device)
        if tc.activation_checkpointing:
            model.gradient_checkpointing_enable()
        freeze(model, tc.frozen)
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        kwargs: dict[str, Any] = {"mesh": mesh}
        if tc.param_dtype == "bfloat16":
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if tc.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        for layer in model.model.layers:
            fully_shard(layer, **kwargs)
        fully_shard(model, **kwargs)
        self.model = model
        self.tie = bool(getattr(model.config, "tie_word_embeddings", False))
        o = tc.optim
        self.optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                                       betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.set_schedule(total_steps)
        self.ref = None   # the KL term's frozen policy: loaded when GRPO starts (load_reference)
        n = sum(p.numel() for p in model.parameters())
        return {"rank": self.rank, "backend": backend, "params": n, "device": str(self.device),
                "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}

    def set_threads(self, n: int) -> None:
        """torch's intra-op threads from now on (trainer.grpo.threads)."""
        torch.set_num_threads(n)

    def threads(self) -> int:
        """torch's intra-op threads now (what tests read)."""
        return torch.get_num_threads()

    def load_reference(self, path: str) -> None:
        """Load the frozen reference policy of the KL term from an HF directory (every rank keeps a
        whole, unsharded copy: it only runs forwards)."""
        from transformers import AutoModelForCausalLM
        self.ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device)
        self.ref.eval().requires_grad_(False)

    def set_schedule(self, total_steps: int, restart: bool = True, lr: float = 0.0) -> None:
        """LR schedule over `total_steps` optimizer steps. restart=False keeps the current step
        (a resumed stage): only the length changes, and the LR is recomputed for that step."""
        o = self.tc.optim
        self.total_steps = total_steps

        def multiplier(s: int) -> float:
            return algos.lr_multiplier(s, self.total_steps, o.warmup_steps, o.schedule, o.min_lr_ratio)

        if restart or not hasattr(self, "sched"):
            for group in self.optim.param_groups:   # a new stage: from the configured LR again
                group.pop("initial_lr", None)
                group["lr"] = lr or o.lr
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, multiplier)
        else:
            for group, base in zip(self.optim.param_groups, self.sched.base_lrs):
                group["lr"] = base * multiplier(self.sched.last_epoch)

    # -- forward ----------------------------------------------------------------------------------------
    def _trained_logits(self, model, mb: list[dict], sampling: algos.RolloutSampling,
                        prefix: SharedPrefix | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, ids, mask, keep) of a micro-batch: the logits of the distribution `sampling`
        describes, only at the positions `keep` some sequence trains on ([B, K, V]: prompts and
        tool outputs are most of a trajectory and need no vocabulary-sized row); ids [B, T] padded;
        mask [B, T-1] aligned with next-token logprobs. With a `prefix` the micro-batch begins with,
        the forward runs the tokens after it on the prefix's keys and values (same logits)."""
        ids, attn = algos.pad_batch([s["token_ids"] for s in mb])
        ids, attn = ids.to(self.device), attn.to(self.device)
        mask = algos.shifted([s["mask"] for s in mb], ids.shape[1]).to(self.device)
        keep = algos.positions_to_keep(mask)
        if prefix is not None and prefix.starts(mb):
            n = len(prefix.tokens)
            logits = model(input_ids=ids[:, n:], attention_mask=attn, past_key_values=prefix.cache(len(mb)),
                           use_cache=True, logits_to_keep=keep - n).logits
        else:
            logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits
        generated = algos.pad_batch([s["generated"] for s in mb])[0].to(self.device) if sampling.penalized else None
        return algos.sampled_logits(logits, sampling, ids, generated, keep), ids, mask, keep

    @torch.no_grad()
    def logprobs(self, micro_batches: list[list[dict]], sampling: algos.RolloutSampling,
                 prefix: list[int] | None = None) -> list[list[list[float]]]:
        """The policy's logprobs of the samples (token_ids, mask) of each micro-batch under `sampling`,
        aligned with token ids: at the positions the mask trains on, 0.0 elsewhere (position 0 always).
        Used before a step's updates (the old policy of mini-batches > 1) and by tests. One micro-batch
        at a time with logits only at those positions, as in `train`: memory stays that of a training
        micro-batch however large the step. Every rank must get the same number of micro-batches
        (FSDP collectives), possibly empty, and the same `prefix` (algos.shared_prefix, run once)."""
        out = []
        shared = SharedPrefix(self.model, prefix, self.device, grad=False) if prefix else None
        for mb in micro_batches:
            logits, ids, mask, keep = self._trained_logits(self.model, mb or [FILLER], sampling, shared)
            # keep is every sequence's trained positions: a sequence gets only its own
            lp = (algos.token_logprobs(logits, ids, keep) * mask).cpu()
            out.append([[0.0] + lp[i, : len(s["token_ids"]) - 1].tolist() for i, s in enumerate(mb)])
        return out

    # -- one optimizer step -------------------------------------------------------------------------------
    def train(self, step: SFTStep | GRPOStep) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches: SFT or GRPO by the step's type.
        Returns the rank's loss (its share of the step's), token and entropy sums, the grad norm, the
        LR, and the micro-steps' per-token metrics (max of *_max, else the mean)."""
        micro_step = self._sft_micro_step if isinstance(step, SFTStep) else self._grpo_micro_step
        self.model.train()
        self.optim.zero_grad(set_to_none=True)
        loss_sum, sums, per_mb = 0.0, {"tokens": 0.0, "entropy_sum": 0.0}, {}
        prefix = SharedPrefix(self.model, step.prefix, self.device, grad=True) if step.prefix else None
        for mb in step.micro_batches:
            loss, metrics = micro_step(mb or [FILLER], step, prefix)
            (loss * self.world_size).backward()   # FSDP averages gradients over ranks: make it a sum
            loss_sum += loss.item()
            for k, v in metrics.items():
                if k in sums:
                    sums[k] += v
                else:
                    per_mb.setdefault(k, []).append(v)
        if prefix is not None:
            prefix.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.optim.max_grad_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.optim.step()
        self.sched.step()
        self.step += 1
        out = {"loss": loss_sum, "grad_norm": float(grad_norm), "lr": self.sched.get_last_lr()[0], **sums}
        for k, v in per_mb.items():
            out[k] = max(v) if k.endswith("_max") else sum(v) / len(v)
        return out

    def _sft_micro_step(self, mb: list[dict], step: SFTStep, prefix: SharedPrefix | None
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        """SFT loss of one micro-batch: the negative log-likelihood of its masked tokens under the raw
        logits (temperature 1: the data's distribution), over the step's token count."""
        logits, ids, mask, keep = self._trained_logits(self.model, mb, algos.RolloutSampling(), prefix)
        lp = algos.token_logprobs(logits, ids, keep)
        loss = algos.sft_loss(lp, mask, norm=step.norm)
        return loss, {"tokens": mask.sum().item()}

    def _grpo_micro_step(self, mb: list[dict], step: GRPOStep, prefix: SharedPrefix | None
                         ) -> tuple[torch.Tensor, dict[str, float]]:
        """GRPO loss of one micro-batch, over the step's normaliser: the clipped, importance-weighted
        policy loss (token or GSPO) under the rollouts' sampling distribution, plus the KL to the reference and
        minus the entropy bonus when configured, with its per-token metrics."""
        g = self.tc.grpo
        logits, ids, mask, keep = self._trained_logits(self.model, mb, step.sampling, prefix)
        t = ids.shape[1]
        lp = algos.token_logprobs(logits, ids, keep)
        rollout_lp = algos.shifted([s["rollout_logprobs"] for s in mb], t).to(self.device)
        old_lp = lp.detach()   # one update per step: the old policy is the current one
        if "old_logprobs" in mb[0]:
            # only at trained positions: elsewhere lp is 0 (no logits kept), so the ratio stays 1
            old = algos.shifted([s["old_logprobs"] for s in mb], t).to(self.device)
            old_lp = torch.where(mask.bool(), old, old_lp)
        adv = torch.tensor([s["advantage"] for s in mb], dtype=torch.float32, device=self.device)
        ref_lp = None
        if self.ref is not None and g.kl_coef > 0:
            with torch.no_grad():
                ref_logits, _, _, _ = self._trained_logits(self.ref, mb, step.sampling)
                ref_lp = algos.token_logprobs(ref_logits, ids, keep)
        agg = algos.effective_loss_agg(g.policy_loss, g.loss_agg)
        ent = algos.entropy(logits if g.entropy_coef else logits.detach(), keep, t - 1)
        trained = mask   # the metrics and the entropy bonus see every trained token; the policy loss
        fork = algos.fork_scores(g.fork_score, ent, lp)
        mask = algos.top_entropy_mask(fork, mask, g.top_entropy_frac)   # only the forking ones (< 1)
        if g.policy_loss == "gspo":   # one clipped ratio per sequence (rl/algos.py gspo_loss)
            loss, m = algos.gspo_loss(lp, old_lp, rollout_lp, adv, mask, clip_low=g.gspo_clip_low,
                                      clip_high=g.gspo_clip_high, tis_cap=g.tis_cap, ref_logprobs=ref_lp,
                                      kl_coef=g.kl_coef, norm=step.norm)
        else:
            loss, m = algos.policy_loss(lp, old_lp, rollout_lp, adv, mask, clip_low=g.clip_low,
                                        clip_high=g.clip_high, tis_cap=g.tis_cap, agg=agg, norm=step.norm,
                                        ref_logprobs=ref_lp, kl_coef=g.kl_coef, clip_ratio_c=g.clip_ratio_c)
        if g.entropy_coef:   # an entropy bonus, aggregated like the loss (per sequence in seq_mean_*)
            loss = loss - g.entropy_coef * algos.aggregate(ent, trained, agg, step.norm)
        metrics = {"tokens": trained.sum().item(), "entropy_sum": (ent.detach() * trained).sum().item()}
        # mismatch between what vLLM computed and what the trainer computes, same weights
        # (exact when old == current policy, i.e. the first mini-batch of a step)
        diff = (old_lp - rollout_lp).abs()[trained.bool()]
        if diff.numel():   # no trained token (a filler): no per-token metrics to dilute the means
            metrics.update(logprob_mismatch_mean=diff.mean().item(), logprob_mismatch_max=diff.max().item(),
                           policy_token_frac=(mask.sum() / trained.sum()).item(), **m)
        return loss, metrics

    def skip_steps(self, n: int) -> None:
        """Move the LR schedule on by `n` optimizer steps that had nothing to train (a GRPO step whose
        groups all had zero variance), so the LR stays a function of the GRPO step like the run's
        length (the schedule spans grpo.steps * mini_batches) and a resume finds the same position."""
        import warnings
        with warnings.catch_warnings():   # stepping the schedule without an optimizer step is the point
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            for _ in range(n):
                self.sched.step()

    def reset_optimizer(self) -> None:
        """Forget the optimizer's state (AdamW's moments and step counts): GRPO starts with a fresh
        optimizer (trainer.grpo.fresh_optimizer), not SFT's moments of another loss. The last step's
        gradients go too: with them left, get_state_dict would save no optimizer state at all."""
        self.optim.state.clear()
        self.optim.zero_grad(set_to_none=True)

    def optimizer_steps(self) -> int:
        """The optimizer's step count (0 when it has no state): what tests read."""
        return max((int(st["step"]) for st in self.optim.state.values() if "step" in st), default=0)

    # -- checkpoints and export ---------------------------------------------------------------------------
    def save(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        # An optimizer without state (fresh, no step yet) is given one by get_state_dict, by a
        # zero-LR step that counts in Adam's bias correction: undo it here and after a resume.
        fresh = not self.optim.state
        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=path)
        if fresh:
            self.reset_optimizer()
        if self.rank == 0:
            torch.save({"scheduler": self.sched.state_dict(), "step": self.step, "fresh_optimizer": fresh},
                       Path(path) / "scheduler.pt")

    def load(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optim)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=path)
        set_state_dict(self.model, self.optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
        extra = torch.load(Path(path) / "scheduler.pt", weights_only=False)
        self.sched.load_state_dict(extra["scheduler"])
        self.step = extra["step"]
        if extra.get("fresh_optimizer"):
            self.reset_optimizer()

    def export_hf(self, path: str, dtype: str, max_shard_size: int | str) -> str:
        """Gather the full weights (every rank takes part) and, on rank 0, write a complete HF model
        directory in `dtype` (rl/export.py: sharded, with config, tokenizer and chat template)."""
        from rl.export import write_hf_dir
        sd = self._full_state_dict()
        if self.rank == 0:
            write_hf_dir(sd, self.model_path, path, tie_word_embeddings=self.tie, dtype=dtype,
                         max_shard_size=max_shard_size)
        return path

    def write_engine_weights(self, path: str) -> str:
        """The disk weight sync: gather, and on rank 0 write only the safetensors, in the engine's
        dtype (model.dtype): what vLLM's in-place reload reads, and nothing more."""
        from rl.export import write_weights_dir
        sd = self._full_state_dict()
        if self.rank == 0:
            write_weights_dir(sd, path, tie_word_embeddings=self.tie, dtype=getattr(torch, self.mc.dtype))
        return path

    def _full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) weights on CPU: a collective, every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    # -- GPU weight sync (rl/weight_sync.py; the disk path is write_engine_weights) ---------------------------------
    def weight_source(self):
        """This rank's view of the weights to stream, in the engine's dtype."""
        from rl.weight_sync import FSDPWeightSource
        return FSDPWeightSource(self.model, tie_word_embeddings=self.tie,
                                dtype=getattr(torch, self.mc.dtype), device=self.device)

    def init_weight_transfer(self, master_addr: str, port: int, world_size: int, engine_handles: list,
                             backend: str, tensor_parallel_size: int) -> None:
        """Join vLLM's weight-transfer group (every rank; rank 0 is the sender and rendezvous with the
        engines at master_addr:port, so this blocks on rank 0 until they have joined). `backend` and
        `tensor_parallel_size` are the engines' (rollout.engine.*), given by the driver."""
        from rl.weight_sync import RayEngineClient, trainer_engine
        self._sync_client = RayEngineClient(engine_handles, tensor_parallel_size)
        self._transfer = trainer_engine(backend, rank=self.rank,
                                        source=self.weight_source(), client=self._sync_client,
                                        master_addr=master_addr, port=port, world_size=world_size)

    def send_weights(self, version: int) -> None:
        """Stream the current weights to the engines as policy `version` (every rank: the FSDP
        gathers are collectives; only rank 0 sends and drives the engines)."""
        self._sync_client.version = version
        self._transfer.send_weights()

    def shutdown(self) -> None:
        import torch.distributed as dist
        if getattr(self, "_transfer", None) is not None:
            self._transfer.shutdown()
        if dist.is_initialized():
            dist.destroy_process_group()
