"""One FSDP2 trainer rank: a Ray actor holding a shard of the policy, its optimizer and scheduler.

Each rank joins a torch.distributed process group (gloo on CPU, NCCL on GPU), loads the model from
an HF directory, and shards it with `fully_shard` per decoder layer and at the root. The driver-side
TrainerGroup (rl/group.py) gives every rank its slice of a batch; ranks run the same number of
micro-batches, FSDP averages gradients across ranks, and every optimizer step is one `train` call.

Loss normalisation: each rank divides its token sum by the GLOBAL number of trained tokens and
multiplies by the world size (FSDP's reduce averages), so the update equals single-process training
on the whole batch.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from rl import algos
from core.net import free_port


class TrainerWorker:
    """Ray actor: one rank. Samples are dicts with token_ids, mask and, for GRPO, advantage and
    rollout_logprobs (all per-token lists aligned with token_ids)."""

    def __init__(self, cfg_yaml: str, rank: int, world_size: int):
        from omegaconf import OmegaConf
        self.cfg = OmegaConf.create(cfg_yaml)
        self.rank, self.world_size = rank, world_size
        self.step = 0

    # -- setup ------------------------------------------------------------------------------------------
    def address(self) -> tuple[str, int]:
        import ray
        return ray.util.get_node_ip_address(), free_port("")

    def setup(self, master_addr: str, master_port: int, total_steps: int) -> dict[str, Any]:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
        from transformers import AutoModelForCausalLM

        from core.model import resolve_model_path

        tc = self.cfg.trainer
        cuda = torch.cuda.is_available()
        backend = tc.backend if tc.backend != "auto" else ("nccl" if cuda else "gloo")
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        torch.manual_seed(self.cfg.seed)
        self.model_path = resolve_model_path(self.cfg.model.path)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_path, dtype=torch.float32,
            attn_implementation=tc.attn_implementation if cuda else "sdpa").to(self.device)
        if tc.activation_checkpointing:
            model.gradient_checkpointing_enable()
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
        self.optim = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=tuple(o.betas),
                                       weight_decay=o.weight_decay)
        self.set_schedule(total_steps)
        self.ref = None   # the KL term's frozen policy: loaded when GRPO starts (load_reference)
        n = sum(p.numel() for p in model.parameters())
        return {"rank": self.rank, "backend": backend, "params": n, "device": str(self.device),
                "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}

    def load_reference(self, path: str) -> None:
        """Load the frozen reference policy of the KL term from an HF directory (every rank keeps a
        whole, unsharded copy: it only runs forwards)."""
        from transformers import AutoModelForCausalLM
        self.ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device)
        self.ref.eval().requires_grad_(False)

    def set_schedule(self, total_steps: int, restart: bool = True, lr: float = 0.0) -> None:
        """LR schedule over `total_steps` optimizer steps. restart=False keeps the current step
        (a resumed stage): only the length changes, and the LR is recomputed for that step."""
        o = self.cfg.trainer.optim
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
    def _forward(self, model, seqs: list[list[int]], temperature: float = 1.0, keep: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of the distribution sampled at `temperature` (GRPO trains what the rollouts sampled),
        at every position or only at the positions `keep` ([B, K, V]: prompts and tool outputs are
        most of a trajectory and need no vocabulary-sized row)."""
        ids, attn = algos.pad_batch(seqs)
        ids, attn = ids.to(self.device), attn.to(self.device)
        logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=0 if keep is None else keep).logits
        return algos.tempered(logits, temperature), ids, attn

    @torch.no_grad()
    def logprobs(self, seqs: list[list[int]], temperature: float = 1.0) -> list[list[float]]:
        """Per-token logprobs aligned with token ids (position 0 gets 0.0), like rollout logprobs,
        of the distribution sampled at `temperature`."""
        batches = [[s] for s in seqs] if self.cfg.trainer.pad_free else [seqs]
        out = []
        for batch in batches:
            logits, ids, _ = self._forward(self.model, batch, temperature)
            lp = algos.token_logprobs(logits, ids).cpu()
            out += [[0.0] + lp[i, : len(s) - 1].tolist() for i, s in enumerate(batch)]
        return out

    @torch.no_grad()
    def old_logprobs(self, micro_batches: list[list[dict]], temperature: float) -> list[list[list[float]]]:
        """The policy's logprobs before a step's updates, for each sample of each micro-batch (aligned
        with token ids), at the positions it trains on and 0.0 elsewhere (the loss reads no others).
        One micro-batch at a time with logits only at those positions, as in `train`: memory stays that
        of a training micro-batch however large the step. Every rank must get the same number of
        micro-batches (FSDP collectives), possibly empty."""
        out = []
        for mb in micro_batches:
            seqs = [s["token_ids"] for s in mb] or [[0, 0]]   # an empty one: a dummy forward
            t = max(len(s) for s in seqs)
            mask = algos.shifted([s["mask"] for s in mb] or [[0, 0]], t).to(self.device)
            keep = algos.positions_to_keep(mask)
            logits, ids, _ = self._forward(self.model, seqs, temperature, keep)
            lp = algos.token_logprobs(logits, ids, keep).cpu()
            out.append([[0.0] + lp[i, : len(s["token_ids"]) - 1].tolist() for i, s in enumerate(mb)])
        return out

    # -- one optimizer step -------------------------------------------------------------------------------
    def train(self, kind: str, micro_batches: list[list[dict]], norm: float) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches. kind: 'sft' or 'grpo'.
        Every rank must get the same number of micro-batches (FSDP collectives), possibly empty."""
        tc = self.cfg.trainer
        g = tc.grpo
        self.model.train()
        self.optim.zero_grad(set_to_none=True)
        sums: dict[str, float] = {"loss": 0.0, "entropy": 0.0, "tokens": 0.0}
        extra: dict[str, list[float]] = {}
        for mb in micro_batches:
            if not mb:   # keep collectives in step: a zero-weight forward/backward on a dummy sequence
                mb = [{"token_ids": [0, 0], "mask": [0, 0], "advantage": 0.0, "rollout_logprobs": [0.0, 0.0]}]
            seqs = [s["token_ids"] for s in mb]
            # GRPO trains the policy at the sampling temperature (vLLM's processed logprobs), not the raw logits
            temperature = self.cfg.rollout.sampling.temperature if kind == "grpo" else 1.0
            t = max(len(s) for s in seqs)
            mask = algos.shifted([s["mask"] for s in mb], t).to(self.device)
            keep = algos.positions_to_keep(mask)   # logits only where a token is trained
            logits, ids, _ = self._forward(self.model, seqs, temperature, keep)
            lp = algos.token_logprobs(logits, ids, keep)
            if kind == "sft":
                loss = algos.sft_loss(lp, mask, norm=norm)
            else:
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
                        ref_logits, _, _ = self._forward(self.ref, seqs, temperature, keep)
                        ref_lp = algos.token_logprobs(ref_logits, ids, keep)
                agg = algos.effective_loss_agg(g.policy_loss, g.loss_agg)
                agg_norm = norm if agg in ("token_mean", "constant") else None
                if g.policy_loss == "gspo":   # one clipped ratio per sequence (rl/algos.py gspo_loss)
                    loss, m = algos.gspo_loss(lp, old_lp, rollout_lp, adv, mask, clip_low=g.gspo_clip_low,
                                              clip_high=g.gspo_clip_high, tis_cap=g.tis_cap,
                                              ref_logprobs=ref_lp, kl_coef=g.kl_coef)
                else:
                    loss, m = algos.policy_loss(lp, old_lp, rollout_lp, adv, mask, clip_low=g.clip_low,
                                                clip_high=g.clip_high, tis_cap=g.tis_cap, agg=g.loss_agg,
                                                norm=agg_norm, ref_logprobs=ref_lp, kl_coef=g.kl_coef,
                                                clip_ratio_c=g.clip_ratio_c)
                ent = algos.entropy(logits if g.entropy_coef else logits.detach(), keep, t - 1)
                sums["entropy"] += (ent.detach() * mask).sum().item()
                if g.entropy_coef:   # an entropy bonus, aggregated like the loss (per sequence in seq_mean_*)
                    loss = loss - g.entropy_coef * algos.aggregate(ent, mask, agg, agg_norm)
                if agg_norm is None:   # per-sequence means: weight this micro-batch by its share of the
                    loss = loss * algos.trained_sequences(mask) / norm   # trained sequences (norm)
                # mismatch between what vLLM computed and what the trainer computes, same weights
                # (exact when old == current policy, i.e. the first mini-batch of a step)
                diff = (old_lp - rollout_lp).abs()[mask.bool()]
                if diff.numel():   # no trained token (a filler): no per-token metrics to dilute the means
                    extra.setdefault("logprob_mismatch_mean", []).append(diff.mean().item())
                    extra.setdefault("logprob_mismatch_max", []).append(diff.max().item())
                    for k, v in m.items():
                        extra.setdefault(k, []).append(v)
            (loss * self.world_size).backward()
            sums["loss"] += loss.item() * self.world_size
            sums["tokens"] += mask.sum().item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.optim.max_grad_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.optim.step()
        self.sched.step()
        self.step += 1
        out = {"loss": sums["loss"] / self.world_size, "grad_norm": float(grad_norm),
               "lr": self.sched.get_last_lr()[0], "tokens": sums["tokens"],
               "entropy_sum": sums["entropy"]}
        for k, v in extra.items():
            out[k] = max(v) if k.endswith("_max") else sum(v) / len(v)
        return out

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

    def export_hf(self, path: str) -> str:
        """Gather the full weights (every rank takes part) and, on rank 0, write an HF directory
        that vLLM's reload and transformers both load (explicit lm_head for tied embeddings)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from core.model import save_hf_weights

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            out = Path(path)
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for f in self.model_path.iterdir():   # config, generation config, tokenizer files
                if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "model.safetensors.index.json":
                    shutil.copy2(f, tmp / f.name)
            save_hf_weights(sd, tmp, tie_word_embeddings=self.tie)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
        return path

    # -- GPU weight sync (rl/weight_sync.py; the disk path is export_hf) ---------------------------------
    def weight_source(self):
        """This rank's view of the weights to stream, in the engine's dtype."""
        from rl.weight_sync import FSDPWeightSource
        return FSDPWeightSource(self.model, tie_word_embeddings=self.tie,
                                dtype=getattr(torch, self.cfg.model.dtype), device=self.device)

    def init_weight_transfer(self, master_addr: str, port: int, world_size: int, engine_handles: list) -> None:
        """Join vLLM's weight-transfer group (every rank; rank 0 is the sender and rendezvous with the
        engines at master_addr:port, so this blocks on rank 0 until they have joined)."""
        from rl.weight_sync import RayEngineClient, trainer_engine
        self._sync_client = RayEngineClient(engine_handles, self.cfg.rollout.engine.tensor_parallel_size)
        self._transfer = trainer_engine(self.cfg.rollout.engine.weight_transfer, rank=self.rank,
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
