"""CI's end-to-end rollout check: episodes of the tiny model through Ray actors (a vLLM engine
actor + the RolloutPool's worker actor, both placed in the layout's rollout bundle as the
training job places them) in real bwrap sandboxes; token/mask/logprob invariants; then the
weight update API against a transformers forward pass of the same weights.

One engine actor for the module (vLLM start ~30 s here)."""
import asyncio

import pytest

from terminus.config import load_config
from core.model import resolve_model_path

ray = pytest.importorskip("ray")


def _tasks(k: int):
    """The first k built-in training tasks."""
    from tasks import load_tasks
    return load_tasks("builtin", "train")[:k]


@pytest.fixture(scope="module")
def cluster():
    from cluster.resources import make_layout
    from core.raycluster import init_ray
    from rollout.engine import make_engine
    init_ray(num_cpus=2, log_to_driver=False, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
    cfg = load_config("tiny_cpu", ["model.dtype=float32", "rollout.sampling.constrain=protocol",
                                   "rollout.sampling.max_tokens_per_turn=48", "rollout.episode.max_turns=3",
                                   "rollout.sandbox.command_timeout_s=20"])
    layout = make_layout(cfg.cluster, {"rollout": 1})   # the driver's placement, CPU path
    engine = make_engine(cfg, actor=True, options=layout.options("engine", 0))
    info = ray.get(engine.handle.info.remote())
    yield cfg, engine, info, layout
    engine.kill()
    layout.remove()
    ray.shutdown()


def _spans(ids, mask):
    out, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def test_engine_reports_memory_at_start(cluster):
    _, _, info, layout = cluster
    assert info["device"] == "cpu" and info["memory"] == "VLLM_CPU_KVCACHE_SPACE=1 GiB"
    assert info["policy_version"] == 0
    assert info["placement_group"] == layout.groups["shared"].id.hex()   # the engine runs in its bundle


def test_episodes_through_ray_actors_are_token_exact(cluster, tok):
    cfg, engine, _, layout = cluster
    from cluster.rollout_pool import RolloutPool
    tasks = _tasks(3)
    pool = RolloutPool(cfg, engine, 1, placement=lambda i: layout.options("rollout", i))

    async def both():
        groups, metrics = await pool.run([(t, 3) for t in tasks], seed=7)
        streamed = [(k, g) async for k, g in pool.stream([(t, 1) for t in tasks[:2]], seed=7)]
        return groups, metrics, streamed

    try:
        groups, metrics, streamed = asyncio.run(both())
    finally:
        pool.shutdown()
    # stream: one group per request as it finishes, request k seeded seed + k
    assert sorted(k for k, _ in streamed) == [0, 1]
    assert all(len(g) == 1 and g[0].task_id == tasks[k].id and g[0].error is None for k, g in streamed)
    assert [len(g) for g in groups] == [3] * len(tasks)
    trajs = [t for g in groups for t in g]
    assert metrics["episodes"] == len(trajs) and metrics["failed"] == 0, [t.error for t in trajs]
    ran = [x for t in trajs for x in t.turns if x.action == "command"]
    assert ran and all(x.exit_code is not None for x in ran)          # commands ran in sandboxes
    for t in trajs:
        assert t.finish_reason in ("report", "max_turns", "context_limit")
        n = len(t.token_ids)
        assert n == len(t.response_mask) == len(t.logprobs) and sum(t.response_mask) > 0
        # prompt prefix = the template's rendering of system + request
        assert t.token_ids[:t.prompt_len] == tok.apply_chat_template(
            t.messages[:2], tokenize=True, add_generation_prompt=True, return_dict=False)
        # masked spans are the generated turns, verbatim
        spans = _spans(t.token_ids, t.response_mask)
        assert [tok.decode(s) for s in spans] == [x.text for x in t.turns]
        assert [len(s) for s in spans] == [x.num_generated_tokens for x in t.turns]
        # the whole sequence is the chat template's rendering of the messages (the turn close is
        # template tokens; after the cap or a report nothing else follows)
        assert tok.decode(t.token_ids, skip_special_tokens=False) == tok.apply_chat_template(
            t.messages, tokenize=False)
        # constrained decoding (sampling.constrain=protocol) gives forced tokens logprob 0.0
        assert all(-1e9 < lp <= 0.0 for lp, m in zip(t.logprobs, t.response_mask) if m)
        assert all(lp == 0.0 for lp, m in zip(t.logprobs, t.response_mask) if not m)
        assert any(lp < 0.0 for lp in t.logprobs)
    assert metrics["generated_tokens"] == sum(sum(t.response_mask) for t in trajs)


def test_rollout_logprobs_match_a_scoring_pass(cluster, tok):
    """The trainer's mismatch check: logprobs of generated tokens == prompt_logprobs of the same ids."""
    from rollout.engine.base import Sampling
    _, engine, _, _ = cluster
    prompt = tok.apply_chat_template([{"role": "user", "content": "List the files."}], tokenize=True,
                                     add_generation_prompt=True, return_dict=False)
    gen = ray.get(engine.handle.generate.remote(prompt, Sampling(max_tokens=32, seed=3, ignore_eos=True)))
    assert len(gen.token_ids) == len(gen.logprobs) == 32 and all(lp < 0 for lp in gen.logprobs)
    scored = ray.get(engine.handle.score.remote(prompt + gen.token_ids))
    assert len(scored) == len(prompt) + 32
    assert max(abs(a - b) for a, b in zip(gen.logprobs, scored[len(prompt):])) <= 1e-4


def test_weight_update_matches_transformers(cluster, tok, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from core.model import save_hf_weights
    cfg, engine, _, _ = cluster
    model = AutoModelForCausalLM.from_pretrained(str(resolve_model_path(cfg.model.path)), dtype=torch.float32)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Run the tests."}, {"role": "assistant", "content": "<command>pytest -q</command>"}],
        tokenize=True, return_dict=False)

    def hf_logprobs(m):
        with torch.no_grad():
            logits = m(torch.tensor([ids])).logits[0].float()
        lp = torch.log_softmax(logits[:-1], -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        return [0.0] + lp.tolist()

    before = ray.get(engine.handle.score.remote(ids))
    assert max(abs(a - b) for a, b in zip(before, hf_logprobs(model))) <= 1e-4
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    save_hf_weights(model.state_dict(), tmp_path, tie_word_embeddings=model.config.tie_word_embeddings)
    out = ray.get(engine.handle.update_weights.remote(str(tmp_path), 1))
    assert out["policy_version"] == 1 and ray.get(engine.handle.policy_version.remote()) == 1
    after = ray.get(engine.handle.score.remote(ids))
    expected = hf_logprobs(model)
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-2          # the weights really changed
    assert max(abs(a - b) for a, b in zip(after, expected)) <= 1e-4
    # generation reports the new version
    from rollout.engine.base import Sampling
    gen = ray.get(engine.handle.generate.remote(ids[:5], Sampling(max_tokens=4, seed=0)))
    assert gen.policy_version == 1 and len(gen.token_ids) == len(gen.logprobs) == 4
