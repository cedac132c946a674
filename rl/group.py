"""TrainerGroup: the driver's handle on the FSDP2 ranks (rl/worker.py). It turns trajectories into
per-rank micro-batches, runs SFT epochs and GRPO steps, writes weights for the rollout engines and HF exports,
and writes and resumes checkpoints. The math is in rl/algos.py; this file only moves data.
"""
from __future__ import annotations

import dataclasses
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

from core.model import DEFAULT_MAX_SHARD_SIZE
from rl import algos, checkpoint
from rl.worker import GRPOStep, SFTStep, TrainerWorker
from rollout.trajectory import Trajectory


def _samples(trajs: Sequence[Trajectory]) -> list[dict]:
    return [{"token_ids": list(t.token_ids), "mask": list(t.response_mask), "generated": list(t.response_mask),
             "rollout_logprobs": list(t.logprobs)} for t in trajs]


def sft_samples(trajs: Sequence[Trajectory], train_on_observations: bool = False) -> list[dict]:
    """SFT samples: the assistant's tokens are the targets, or, with `train_on_observations`, every
    token after the initial prompt (assistant turns and the tool outputs between them); never a turn
    the protocol rejected (a demonstration of recovering from a format error teaches the recovery)."""
    samples = _samples(trajs)
    for s, t in zip(samples, trajs):
        accepted = without_rejected_turns(t)
        if train_on_observations:   # every token after the prompt, less the rejected turns' generated ones
            rejected = [gen - ok for gen, ok in zip(t.response_mask, accepted)]
            s["mask"] = [int(i >= t.prompt_len and not r) for i, r in enumerate(rejected)]
        else:
            s["mask"] = accepted
    return samples


def without_rejected_turns(t: Trajectory) -> list[int]:
    """The trajectory's generated-token mask less the turns the protocol rejected (format errors)."""
    malformed = [u.rejected for u in t.turns]
    if not any(malformed):
        return list(t.response_mask)
    return algos.mask_turns(t.response_mask, [u.num_generated_tokens for u in t.turns], malformed)


def loss_mask(t: Trajectory, advantage: float, reinforce_malformed: bool = False) -> list[int]:
    """The tokens the policy loss sees: the generated ones, less, in a trajectory with a positive
    advantage, the turns the protocol rejected (unless reinforce_malformed): an episode that
    recovered from a malformed report should reinforce the recovery, not the malformed attempt."""
    if reinforce_malformed or advantage <= 0:
        return list(t.response_mask)
    return without_rejected_turns(t)


def overlong(t: Trajectory) -> bool:
    """The episode ended on a turn cut at its token budget: its reward judges an unfinished answer."""
    return bool(t.turns) and t.turns[-1].cut_off


def filter_overlong(trajs: Sequence[Trajectory], adv: Sequence[float | None]) -> tuple[list[float | None], int]:
    """DAPO's overlong filtering: the advantages with those of overlong trajectories set to None (out
    of the loss), and how many it took out of the loss. Applied after the group advantages, so a cut
    trajectory's reward still counts in its group's baseline."""
    cut = [a is not None and overlong(t) for t, a in zip(trajs, adv)]
    return [None if c else a for c, a in zip(cut, adv)], sum(cut)


def merge_metrics(outs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Metrics of several pieces (ranks, mini-batches) as one: the max of `*_max`, else the mean over
    the pieces that report the key (one without a trained token reports no per-token metric)."""
    keys = sorted({k for o in outs for k in o})
    return {k: (max if k.endswith("_max") else statistics.fmean)([o[k] for o in outs if k in o]) for k in keys}


def trainer_env() -> dict[str, str]:
    """Environment of the trainer ranks: OMP_WAIT_POLICY when the driver's environment sets one, else
    OpenMP's default, threads that spin a while between operations. Told to sleep (PASSIVE), they are
    woken at every operation, and a rank's step on 2 cores takes 1.5-2x as long as spinning (and longer
    than with one thread). A trainer that shares its cores with a rollout engine runs GRPO with fewer
    threads instead (trainer.grpo.threads; docs/cluster.md)."""
    return {"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]} if "OMP_WAIT_POLICY" in os.environ else {}


def deal(micro_batches: list[list[dict]], world: int, per_rank: int | None = None) -> list[list[list[dict]]]:
    """Round-robin micro-batches over ranks; every rank gets the same count (empties fill the gaps)."""
    per_rank = per_rank or max(1, -(-len(micro_batches) // world))
    out: list[list[list[dict]]] = [[] for _ in range(world)]
    for i, mb in enumerate(micro_batches):
        out[i % world].append(mb)
    for r in out:
        r.extend([] for _ in range(per_rank - len(r)))
    return out


class TrainerGroup:
    def __init__(self, cfg, layout=None):
        import ray
        from omegaconf import OmegaConf

        self.cfg = cfg
        self.world = cfg.trainer.num_workers
        self.root = checkpoint.checkpoint_root(cfg.output_dir)
        self.stage = ""
        self.step = 0              # optimizer steps in the current stage
        self.version = 0           # policy version: GRPO updates applied
        self.sft_step = 0
        self.wandb_run_id: str | None = None
        self._tracker = None
        remote = ray.remote(TrainerWorker)
        # The ranks get the trainer and model sections only: the rest (seed, the rollout engines of a
        # weight sync, a step's sampling distribution) is passed with the call that needs it.
        sections = OmegaConf.to_yaml(cfg.trainer), OmegaConf.to_yaml(cfg.model)
        self.workers = []
        for rank in range(self.world):
            opts = layout.options("trainer", rank) if layout is not None else \
                {"num_cpus": float(cfg.cluster.trainer.num_cpus), "num_gpus": float(cfg.cluster.trainer.num_gpus)}
            opts["runtime_env"] = {"env_vars": trainer_env()}
            self.workers.append(remote.options(**opts).remote(*sections, rank, self.world))
        addr, port = ray.get(self.workers[0].address.remote())
        self.info = ray.get([w.setup.remote(addr, port, 1, cfg.seed) for w in self.workers])

    # -- plumbing -----------------------------------------------------------------------------------------
    def _all(self, method: str, *args) -> list:
        import ray
        return ray.get([getattr(w, method).remote(*args) for w in self.workers])

    def _train(self, step: SFTStep | GRPOStep) -> dict[str, float]:
        """One optimizer step: `step`'s micro-batches dealt over the ranks, the rest of it (normaliser,
        sampling distribution) sent to each as is."""
        import ray
        mbs = step.micro_batches
        if self.cfg.trainer.pad_free:   # same optimizer step, one unpadded sequence per forward
            mbs = [[s] for mb in mbs for s in mb]
        if self.cfg.trainer.shared_prefix:   # the system prompt once per step, not once per sample
            step = dataclasses.replace(step, prefix=algos.shared_prefix([s for mb in mbs for s in mb]))
        per_rank = deal(mbs, self.world)
        outs = ray.get([w.train.remote(dataclasses.replace(step, micro_batches=mine))
                        for w, mine in zip(self.workers, per_rank)])
        m = merge_metrics(outs)   # a rank that got only empty micro-batches reports no per-token metrics
        m["loss"] = sum(o["loss"] for o in outs)   # each rank's share of the global loss
        m["tokens"] = sum(o["tokens"] for o in outs)
        if isinstance(step, GRPOStep):
            m["entropy"] = sum(o["entropy_sum"] for o in outs) / max(1.0, m["tokens"])
        m.pop("entropy_sum", None)
        return m

    @property
    def tracker(self):
        from core.tracking import Tracker
        if self._tracker is None:
            self._tracker = Tracker(self.cfg, self.cfg.output_dir, run_id=self.wandb_run_id)
            self.wandb_run_id = self._tracker.run_id
        return self._tracker

    def logprobs(self, samples: list[dict], sampling: algos.RolloutSampling) -> list[list[float]]:
        """The current policy's logprobs of samples (token_ids, mask; `generated` when `sampling` has
        penalties) under the rollouts' sampling distribution, aligned
        with token ids, at the positions each mask trains on (0.0 elsewhere; a mask of ones: every
        position after the first). Micro-batches of grpo.micro_batch_size (one sequence with pad_free)
        dealt over the ranks, logits only where a token is trained, so neither compute nor memory of
        one rank grows with the batch (TrainerWorker.logprobs)."""
        import ray
        size = 1 if self.cfg.trainer.pad_free else self.cfg.trainer.grpo.micro_batch_size
        order = sorted(range(len(samples)), key=lambda i: -len(samples[i]["token_ids"]))   # little padding
        per_rank = deal([order[i:i + size] for i in range(0, len(order), size)], self.world)
        fields = ("token_ids", "mask", "generated")
        prefix = algos.shared_prefix(samples) if self.cfg.trainer.shared_prefix else []
        outs = ray.get([w.logprobs.remote([[{k: samples[i][k] for k in fields if k in samples[i]}
                                            for i in mb] for mb in mbs], sampling, prefix)
                        for w, mbs in zip(self.workers, per_rank)])
        lps: list[list[float]] = [[] for _ in samples]
        for mbs, out in zip(per_rank, outs):
            for mb, mb_lps in zip(mbs, out):
                for i, lp in zip(mb, mb_lps):
                    lps[i] = lp
        return lps

    # -- SFT ----------------------------------------------------------------------------------------------
    def sft_schedule(self, samples: list[dict]) -> list[list[list[dict]]]:
        """The optimizer steps of the SFT stage, in order: each a list of micro-batches.
        Deterministic from the seed, so a resumed run replays the same data order."""
        sc = self.cfg.trainer.sft
        per_step = self.world * sc.grad_accum
        steps: list[list[list[dict]]] = []
        for epoch in range(sc.epochs):
            mbs = [[samples[i] for i in b]
                   for b in algos.pack_by_tokens([len(s["token_ids"]) for s in samples], sc.micro_batch_tokens)]
            random.Random(self.cfg.seed * 1000 + epoch).shuffle(mbs)
            steps += [mbs[i:i + per_step] for i in range(0, len(mbs), per_step)]
        return steps[: sc.max_steps] if sc.max_steps else steps

    def sft(self, demos: Sequence[Trajectory], stop_after: int | None = None) -> dict[str, Any]:
        """Train on demonstrations (assistant tokens only). Returns the loss curve. Resumes at
        self.sft_step when a checkpoint was loaded; `stop_after` ends early (tests, kill drills)."""
        usable = [t for t in demos if t.error is None and t.finish_reason != "timeout" and sum(t.response_mask)]
        if not usable:
            raise ValueError("SFT got no usable demonstration (all failed or without assistant tokens)")
        schedule = self.sft_schedule(sft_samples(usable, self.cfg.trainer.sft.train_on_observations))
        self.stage = "sft"
        self._all("set_schedule", len(schedule), self.sft_step == 0)
        curve = []
        every = self.cfg.trainer.sft.checkpoint_every
        t0 = time.time()
        while self.sft_step < len(schedule):
            if stop_after is not None and self.sft_step >= stop_after:
                break
            mbs = schedule[self.sft_step]
            m = self._train(SFTStep(mbs, algos.loss_normaliser([s["mask"] for mb in mbs for s in mb], "token_mean")))
            self.sft_step += 1
            curve.append(m["loss"])
            self.tracker.log({**m, "epoch_progress": self.sft_step / len(schedule)}, self.sft_step, prefix="sft/")
            if every and self.sft_step % every == 0:
                self.save_checkpoint(self.sft_step)
        return {"steps": self.sft_step, "loss_curve": curve, "final_loss": curve[-1] if curve else None,
                "demos": len(usable), "time_s": time.time() - t0}

    # -- GRPO ---------------------------------------------------------------------------------------------
    def grpo_step(self, trajectories: Sequence[Trajectory], version: int) -> dict[str, Any]:
        """One GRPO update on judged trajectories; returns its metrics (rewards, advantages,
        loss, KL, entropy, clip fraction, grad norm, logprob mismatch, ...)."""
        g, r = self.cfg.trainer.grpo, self.cfg.rollout
        # The distribution the rollouts were sampled from: every logprob of the step, old policy's
        # included, is computed under it, sent with the step (the ranks read no rollout config).
        sampling = algos.RolloutSampling.from_config(r.sampling)
        if self.stage != "grpo":
            self._start_grpo()
        t0 = time.time()
        trajs = list(trajectories)
        rewards = [t.reward if t.error is None else None for t in trajs]
        adv, stats = algos.group_advantages(rewards, [t.group_id for t in trajs], g.advantage)
        if g.overlong_filter:
            adv, cut = filter_overlong(trajs, adv)
            stats.update(overlong_masked=cut, trained=stats["trained"] - cut)
        metrics: dict[str, Any] = {**stats, **reward_metrics(trajs)}
        chosen = [(t, a) for t, a in zip(trajs, adv) if a is not None]
        metrics["adv_abs_mean"] = statistics.fmean(abs(a) for _, a in chosen) if chosen else 0.0
        if not chosen:   # nothing to train, yet a step: the counters (checkpoints, resume, the offline data
            metrics["skipped_update"] = 1   # offset) and the LR schedule move on as after an update
            self._all("skip_steps", g.mini_batches)
            self.step += 1
            self.version = version + 1
            return metrics
        samples = _samples([t for t, _ in chosen])
        masked = 0
        for s, (t, a) in zip(samples, chosen):
            s["advantage"] = a
            kept = loss_mask(t, a, g.reinforce_malformed_turns)
            masked += sum(s["mask"]) - sum(kept)
            s["mask"] = kept
        metrics["malformed_tokens_masked"] = masked
        if g.mini_batches > 1:   # old-policy logprobs, before the first of several updates
            for s, lp in zip(samples, self.logprobs(samples, sampling)):
                s["old_logprobs"] = lp
        random.Random(self.cfg.seed + version).shuffle(samples)
        per_update = -(-len(samples) // g.mini_batches)
        outs = []
        for k in range(0, len(samples), per_update):
            mini = sorted(samples[k:k + per_update], key=lambda s: -len(s["token_ids"]))
            mbs = [mini[i:i + g.micro_batch_size] for i in range(0, len(mini), g.micro_batch_size)]
            # one optimizer step per mini-batch: its own normaliser (constant: the rollouts' token budget)
            norm = algos.loss_normaliser([s["mask"] for s in mini], algos.effective_loss_agg(g.policy_loss, g.loss_agg),
                                         r.sampling.max_tokens_per_turn * r.episode.max_turns)
            outs.append(self._train(GRPOStep(mbs, norm, sampling)))
        metrics.update(merge_metrics(outs))
        self.step += 1
        self.version = version + 1
        metrics["train_time_s"] = time.time() - t0
        return metrics

    def _start_grpo(self, resumed: bool = False) -> None:
        """Enter the GRPO stage: the LR schedule of its steps and, with a KL term, the reference it
        anchors to: the policy GRPO starts from (the SFT model after SFT, not the base model).
        The reference is written once to <checkpoints>/reference, so a resumed run anchors to the
        same weights."""
        g = self.cfg.trainer.grpo
        self.stage = "grpo"
        if g.threads:
            self._all("set_threads", g.threads)
        if g.fresh_optimizer and not resumed:   # SFT's Adam moments are of another loss (a resume loads GRPO's)
            self._all("reset_optimizer")
        self._all("set_schedule", g.steps * g.mini_batches, True, g.lr)   # a resume then loads its state
        if not self.cfg.trainer.use_reference_model:
            return
        ref = self.root / "reference"
        if not resumed:   # full precision: the KL anchors to exactly the weights GRPO starts from
            self.export_hf(ref, "float32")
        elif not (ref / "config.json").exists():
            raise FileNotFoundError(f"{ref} is missing: the run was checkpointed in GRPO with a KL reference, "
                                    "and a resumed run needs the same one (start a new output_dir to begin again)")
        self._all("load_reference", str(ref))

    # -- weights and checkpoints ----------------------------------------------------------------------------
    def export_hf(self, path: str | Path, dtype: str = "", max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
        """The current policy as a complete HF model directory (rl/export.py), in `dtype` (default: the
        training dtype, trainer.param_dtype), sharded: what `vllm serve` and transformers load."""
        self._all("export_hf", str(path), dtype or self.cfg.trainer.param_dtype, max_shard_size)
        return Path(path)

    def write_engine_weights(self, path: str | Path) -> Path:
        """The current weights for the engines' disk reload: safetensors only, in model.dtype."""
        self._all("write_engine_weights", str(path))
        return Path(path)

    def init_weight_transfer(self, engines: Sequence) -> None:
        """Connect the ranks to the engines (RayEngine clients) for `push_weights`, once. A no-op for
        the disk path; nccl/ipc join vLLM's weight-transfer group (rl/weight_sync.py)."""
        if self.cfg.rollout.engine.weight_transfer == "disk":
            return
        import ray

        from rl.weight_sync import transfer_world_size

        addr, port = ray.get(self.workers[0].address.remote())   # rank 0 is the sender: it hosts the rendezvous
        ec = self.cfg.rollout.engine
        world = transfer_world_size(len(engines), ec.tensor_parallel_size)
        self._all("init_weight_transfer", addr, port, world, [e.handle for e in engines], ec.weight_transfer,
                  ec.tensor_parallel_size)

    def push_weights(self, engines: Sequence, version: int, path: str | Path) -> None:
        """Give the engines the current weights as policy `version`, by the configured path
        (rollout.engine.weight_transfer): disk writes an HF dir at `path` that each engine reloads;
        nccl/ipc stream them (after `init_weight_transfer`)."""
        import ray
        if self.cfg.rollout.engine.weight_transfer == "disk":
            self.write_engine_weights(path)
            ray.get([e.handle.update_weights.remote(str(path), version) for e in engines])
        else:
            self._all("send_weights", version)

    def save_checkpoint(self, step: int) -> Path:
        """Checkpoint everything; directories are numbered by optimizer steps over both stages
        (monotonic, so the newest is the last), `step` is recorded as the caller's step."""
        t0 = time.time()
        tmp = checkpoint.staging_dir(self.root, self.sft_step + self.step)
        self._all("save", str(tmp))
        state = {"step": step, "stage": self.stage, "sft_step": self.sft_step, "grpo_step": self.step,
                 "version": self.version, "wandb_run_id": self.wandb_run_id, "rng": checkpoint.rng_state(),
                 "seed": self.cfg.seed}
        final = checkpoint.commit(tmp, state, self.cfg.trainer.checkpoint.keep_last)
        print(f"[checkpoint] {final} ({time.time() - t0:.1f}s)", flush=True)
        return final

    def resume_point(self) -> tuple[int, int]:
        """Load the newest complete checkpoint, if any: (next GRPO step, policy version)."""
        ckpt = checkpoint.latest(self.root)
        if ckpt is None:
            return 0, 0
        state = checkpoint.read_state(ckpt)
        self.stage = state["stage"]
        if self.stage == "grpo":   # the LR schedule's length must be known before the scheduler state loads
            self._start_grpo(resumed=True)
        self._all("load", str(ckpt))
        self.sft_step, self.step, self.version = state["sft_step"], state["grpo_step"], state["version"]
        self.wandb_run_id = state.get("wandb_run_id")
        checkpoint.restore_rng(state.get("rng", {}))
        print(f"[resume] from {ckpt}: stage {self.stage}, sft step {self.sft_step}, grpo step {self.step}, "
              f"policy v{self.version}", flush=True)
        return self.step, self.version

    def shutdown(self) -> None:
        import ray
        try:
            self._all("shutdown")
        finally:
            for w in self.workers:
                ray.kill(w)
            if self._tracker is not None:
                self._tracker.finish()


def reward_metrics(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Reward mean/std, per-dimension means and failure-mode rates from the judges' verdicts, turns."""
    judged = [t for t in trajs if t.reward is not None]
    m: dict[str, float] = {"trajectories": len(trajs), "episode_errors": sum(t.error is not None for t in trajs),
                           "turns_mean": statistics.fmean(len(t.turns) for t in trajs) if trajs else 0.0,
                           "response_tokens_mean": statistics.fmean(sum(t.response_mask) for t in trajs)
                           if trajs else 0.0}
    if judged:
        rs = [t.reward for t in judged]
        m["reward_mean"] = statistics.fmean(rs)
        m["reward_std"] = statistics.pstdev(rs)
    dims: dict[str, list[float]] = {}
    fails: dict[str, list[float]] = {}
    for t in judged:
        v = t.verdict or {}
        for k, d in (v.get("dimensions") or {}).items():
            dims.setdefault(k, []).append(float(d["score"] if isinstance(d, dict) else d))
        for k, f in (v.get("failures") or {}).items():
            fails.setdefault(k, []).append(float(f["flag"] if isinstance(f, dict) else f))
    m.update({f"dim/{k}": statistics.fmean(v) for k, v in dims.items()})
    m.update({f"fail/{k}": statistics.fmean(v) for k, v in fails.items()})
    return m
