"""The FSDP2 trainer on 2 gloo ranks in Ray actors: SFT learns, checkpoints resume exactly,
partial checkpoints are ignored, and exported weights reach a real vLLM engine intact."""
import asyncio

import pytest
import torch
from safetensors.torch import load_file

from rl import checkpoint
from rollout.trajectory import Trajectory
from tasks import load_tasks
from terminus.config import load_config

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


def demos(tok, k=12):
    """Demonstrations from built-in tasks: request -> reference command -> reference report."""
    out = []
    for t in load_tasks("builtin", "train")[:k]:
        msgs = [{"role": "user", "content": t.request}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        answer = tok.encode(f"<command>{t.reference.commands[0]}</command><|im_end|>", add_special_tokens=False)
        out.append(Trajectory(task_id=t.id, messages=msgs, token_ids=prompt + answer,
                              response_mask=[0] * len(prompt) + [1] * len(answer),
                              logprobs=[0.0] * (len(prompt) + len(answer)), group_id=t.project))
    return out


def config(tmp_path, *over):
    return load_config("tiny_cpu", [f"output_dir={tmp_path}", "trainer.num_workers=2", "cluster.trainer.num_cpus=1",
                                    "logging.wandb_mode=disabled", "trainer.sft.micro_batch_tokens=512",
                                    "trainer.optim.warmup_steps=1", *over])


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_sft_loss_falls(cluster, tok, tmp_path):
    from rl import TrainerGroup
    g = TrainerGroup(config(tmp_path, "trainer.sft.epochs=8", "trainer.optim.lr=1e-3"))
    try:
        assert [i["backend"] for i in g.info] == ["gloo", "gloo"]
        assert [i["omp_wait_policy"] for i in g.info] == ["PASSIVE", "PASSIVE"]   # rl.group.trainer_env
        s = g.sft(demos(tok))
    finally:
        g.shutdown()
    curve = s["loss_curve"]
    assert len(curve) >= 8
    assert max(curve[-2:]) < 0.6 * curve[0], curve   # each step sees every demo: a full-data loss


def test_resume_gives_the_same_weights_and_data_order(cluster, tok, tmp_path):
    from rl import TrainerGroup
    data = demos(tok)
    over = ("trainer.sft.epochs=2", "trainer.sft.max_steps=4", "trainer.sft.checkpoint_every=2")

    straight = TrainerGroup(config(tmp_path / "a", *over))
    try:
        curve_a = straight.sft(data)["loss_curve"]
        schedule_a = straight.sft_schedule([{"token_ids": t.token_ids, "mask": t.response_mask} for t in data])
        straight.export_hf(tmp_path / "a" / "hf")
    finally:
        straight.shutdown()

    first = TrainerGroup(config(tmp_path / "b", *over))
    first.sft(data, stop_after=2)
    for w in first.workers:   # the job dies: no clean shutdown
        ray.kill(w)
    # ... and it died while writing its next checkpoint: a temporary dir and a dir without COMPLETE
    root = tmp_path / "b" / "checkpoints"
    (root / "step_000003.tmp").mkdir()
    (root / "step_000004").mkdir()
    (root / "step_000004" / "trainer_state.json").write_text('{"step": 4}')
    second = TrainerGroup(config(tmp_path / "b", *over))
    try:
        assert second.resume_point() == (0, 0) and second.sft_step == 2   # the previous complete one
        schedule_b = second.sft_schedule([{"token_ids": t.token_ids, "mask": t.response_mask} for t in data])
        curve_b = second.sft(data)["loss_curve"]
        second.export_hf(tmp_path / "b" / "hf")
    finally:
        second.shutdown()
    assert [[s["token_ids"] for s in mb] for step in schedule_a for mb in step] == \
           [[s["token_ids"] for s in mb] for step in schedule_b for mb in step]
    assert curve_b == pytest.approx(curve_a[2:], abs=1e-5)
    wa, wb = weights(tmp_path / "a" / "hf"), weights(tmp_path / "b" / "hf")
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 1e-5


def test_pad_free_takes_the_same_steps_as_padded_micro_batches(cluster, tok, tmp_path):
    """trainer.pad_free splits each micro-batch into unpadded sequences (uneven counts per rank,
    filled with empties): the same optimizer steps, the same weights."""
    from rl import TrainerGroup
    data = demos(tok)
    curves = {}
    for pad_free in (False, True):
        g = TrainerGroup(config(tmp_path / str(pad_free), "trainer.sft.max_steps=3", f"trainer.pad_free={pad_free}"))
        try:
            assert len(g.sft_schedule([{"token_ids": t.token_ids, "mask": t.response_mask} for t in data])[0][0]) > 1
            curves[pad_free] = g.sft(data)["loss_curve"]
            g.export_hf(tmp_path / str(pad_free) / "hf")
        finally:
            g.shutdown()
    assert curves[True] == pytest.approx(curves[False], abs=1e-5)
    padded, unpadded = weights(tmp_path / "False" / "hf"), weights(tmp_path / "True" / "hf")
    # other kernels round differently, and Adam scales a near-zero gradient's rounding up to the LR
    # (2e-3 a step): a wrong split or normalisation moves weights by ~1e-3
    assert max((padded[k] - unpadded[k]).abs().max().item() for k in padded) <= 2e-4


def sampled_by(g, data, version):
    """The demos as if the trainer's current policy had sampled them (its own logprobs), in two
    groups of mixed rewards."""
    sampled = g.logprobs([t.token_ids for t in data], g.cfg.rollout.sampling.temperature)
    return [Trajectory(task_id=t.task_id, messages=t.messages, token_ids=t.token_ids, response_mask=t.response_mask,
                       logprobs=lp, group_id=str(i % 2), reward=float(i % 4 < 2), policy_version=version)
            for i, (t, lp) in enumerate(zip(data, sampled))]


def test_grpo_mini_batches_are_clipped_against_the_policy_that_sampled(cluster, tok, tmp_path):
    """trainer.grpo.mini_batches=2: two optimizer steps per GRPO step, both measured against the
    pre-update (sampling) policy. The first sees ratio 1 exactly; the second sees the first's update,
    so a large step must show up as ratios away from 1 and clipped tokens. With one mini-batch
    nothing is ever clipped (old == current), which is what a lost `old_logprobs` would look like."""
    from rl import TrainerGroup
    data = demos(tok)
    metrics = {}
    for n in (1, 2):
        g = TrainerGroup(config(tmp_path / str(n), "trainer.grpo.lr=0.05", "trainer.grpo.steps=1",
                                f"trainer.grpo.mini_batches={n}", "trainer.optim.warmup_steps=0",
                                "trainer.optim.schedule=constant"))
        try:
            metrics[n] = g.grpo_step(sampled_by(g, data, 0), 0)
        finally:
            g.shutdown()
    one, two = metrics[1], metrics[2]
    # the old logprobs the second mini-batch is clipped against are the sampled ones, position for position
    assert two["logprob_mismatch_max"] <= 1e-4, two
    assert one["clip_frac"] == 0.0 and one["ratio_mean"] == pytest.approx(1.0, abs=1e-5), one
    assert two["clip_frac"] > 0.0 and abs(two["ratio_mean"] - 1.0) > 1e-3, two


def test_kl_reference_is_the_policy_grpo_starts_from(cluster, tok, tmp_path):
    """use_reference_model: the KL term anchors GRPO to the model it starts from (after SFT, the SFT
    model, not the base model), and a run resumed in GRPO to that same reference."""
    from rl import TrainerGroup
    data = demos(tok)
    over = ("trainer.use_reference_model=true", "trainer.grpo.kl_coef=0.1", "trainer.grpo.lr=0.01",
            "trainer.sft.max_steps=3", "trainer.optim.warmup_steps=0")
    g = TrainerGroup(config(tmp_path, *over))
    try:
        g.sft(data)
        first = g.grpo_step(sampled_by(g, data, 0), 0)
        g.save_checkpoint(1)
        batch = sampled_by(g, data, 1)
        second = g.grpo_step(batch, 1)
    finally:
        g.shutdown()
    assert (tmp_path / "checkpoints" / "reference" / "model.safetensors").exists()
    assert first["kl"] < 1e-7, first     # nothing has moved from the reference yet
    assert second["kl"] > 1e-4, second   # one update later it has
    g = TrainerGroup(config(tmp_path, *over))
    try:
        assert g.resume_point()[1] == 1
        resumed = g.grpo_step(batch, 1)
    finally:
        g.shutdown()
    assert resumed["kl"] == pytest.approx(second["kl"], rel=1e-4, abs=1e-7)


def test_partial_checkpoints_are_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    good = checkpoint.commit(checkpoint.staging_dir(root, 2), {"step": 2}, keep_last=2)
    checkpoint.staging_dir(root, 4)                      # killed while writing: only the .tmp exists
    (root / "step_000006").mkdir()                       # renamed by hand, no COMPLETE marker
    assert checkpoint.latest(root) == good
    for s in (8, 10, 12):
        checkpoint.commit(checkpoint.staging_dir(root, s), {"step": s}, keep_last=2)
    assert [p.name for p in checkpoint.complete_checkpoints(root)] == ["step_000010", "step_000012"]


def test_exported_weights_reach_vllm_exactly(cluster, tok, tmp_path):
    """After an update and a sync, vLLM's logprobs equal the trainer's (float32, <= 1e-4)."""
    from rl import TrainerGroup
    from rollout.engine.vllm_engine import start_engine_actor
    cfg = config(tmp_path, "trainer.sft.epochs=1")
    g = TrainerGroup(cfg)
    engine = start_engine_actor(cfg)
    try:
        data = demos(tok, 4)
        g.sft(data)
        seqs = [t.token_ids for t in data]
        trainer_lp = g.logprobs(seqs)
        before = ray.get(engine.handle.score.remote(seqs[0]))
        path = g.export_hf(tmp_path / "v1")
        asyncio.run(engine.update_weights(str(path), 1))
        for seq, lp in zip(seqs, trainer_lp):
            engine_lp = ray.get(engine.handle.score.remote(seq))
            assert max(abs(a - b) for a, b in zip(engine_lp[1:], lp[1:])) <= 1e-4
        assert max(abs(a - b) for a, b in zip(before[1:], trainer_lp[0][1:])) > 1e-3   # it really changed
        # What GRPO trains on: vLLM's logprobs of tokens it sampled at T=0.8 (processed_logprobs)
        # are the trainer's at the same temperature, and not its raw ones.
        from rollout.engine.base import Sampling
        prompt = seqs[0][:40]
        gen = ray.get(engine.handle.generate.remote(prompt, Sampling(max_tokens=16, temperature=0.8, ignore_eos=True)))
        seq = prompt + list(gen.token_ids)
        tempered, raw = g.logprobs([seq], 0.8)[0][len(prompt):], g.logprobs([seq])[0][len(prompt):]
        assert max(abs(a - b) for a, b in zip(gen.logprobs, tempered)) <= 1e-4
        assert max(abs(a - b) for a, b in zip(gen.logprobs, raw)) > 1e-3
    finally:
        engine.kill()
        g.shutdown()


def test_grpo_raises_a_verifiable_reward_through_vllm(cluster, tok, tmp_path):
    """Sign and scale of the update: vLLM samples the first token from the model's top 2 at a fixed
    prompt; the reward is 1 for the LESS likely of the two. A few GRPO steps with weight syncs must
    make it clearly the more likely one; the trainer agrees with vLLM on the logprobs it trains on.

    The verdict is read from vLLM's own logprobs of the two tokens after the last sync (exact, no
    sampling noise: vLLM CPU ignores per-request seeds, so sampled counts vary from run to run)."""
    from collections import Counter

    from rl import TrainerGroup
    from rollout.engine.base import Sampling
    from rollout.engine.vllm_engine import start_engine_actor
    # top-2 sampling at T=1: vLLM's raw logprobs are the full softmax the trainer computes
    cfg = config(tmp_path, "trainer.grpo.lr=0.003", "trainer.grpo.micro_batch_size=16", "trainer.grpo.steps=6",
                 "trainer.optim.warmup_steps=0", "rollout.sampling.temperature=1.0",
                 "rollout.engine.logprobs_mode=raw_logprobs")
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say something."}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    g = TrainerGroup(cfg)
    engine = start_engine_actor(cfg)

    def sample(seed: int, n: int = 32):
        return ray.get([engine.handle.generate.remote(prompt, Sampling(max_tokens=4, top_k=2, seed=seed * 1000 + i,
                                                                       ignore_eos=True)) for i in range(n)])

    def margin(a: int, b: int) -> float:   # log p(a) - log p(b) as the first token, under vLLM's weights
        return ray.get(engine.handle.score.remote(prompt + [a]))[-1] - ray.get(engine.handle.score.remote(prompt + [b]))[-1]

    try:
        first = Counter(gen.token_ids[0] for gen in sample(100, 64))
        assert len(first) == 2, first
        a, b = first
        target, other = (a, b) if margin(a, b) < 0 else (b, a)
        before = margin(target, other)
        counts = []
        for step in range(6):
            gens = sample(step)
            counts.append(sum(gen.token_ids[0] == target for gen in gens))
            if counts[-1] >= 30:   # learned. Training on, at lr 3e-3, the nearly uniform groups (one
                break              # failure: advantage -2.6) can overshoot the target out of the top 2
            trajs = [Trajectory(task_id="x", messages=[], token_ids=prompt + gen.token_ids,
                                response_mask=[0] * len(prompt) + [1] * len(gen.token_ids),
                                logprobs=[0.0] * len(prompt) + gen.logprobs, group_id=str(i // 8),
                                reward=float(gen.token_ids[0] == target), policy_version=step)
                     for i, gen in enumerate(gens)]
            m = g.grpo_step(trajs, step)
            if m.get("trained"):
                assert m["logprob_mismatch_max"] <= 1e-3, m
            asyncio.run(engine.update_weights(str(g.export_hf(tmp_path / f"v{step + 1}")), step + 1))
        after = margin(target, other)
    finally:
        engine.kill()
        g.shutdown()
    # before: the target is the less likely token (margin <= 0); after: at least e^2 ~ 7x more likely
    # than the other (it would be sampled ~88% of the time among the two)
    assert before <= 0 and after >= 2.0, (before, after, counts)
