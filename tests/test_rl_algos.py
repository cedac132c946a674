"""GRPO/SFT math against hand-computed values."""
import math

import pytest
import torch

from rl.algos import (aggregate, entropy, group_advantages, k3_kl, lr_multiplier, mask_turns, pack_by_tokens,
                      policy_loss, positions_to_keep, shifted, token_logprobs)
from rl.algos import effective_loss_agg, gspo_loss, informative
from rl.algos import LOG_RATIO_MAX, loss_normaliser, shared_prefix, tempered, trained_sequences


def test_grpo_advantages_by_hand():
    # group a: rewards 1, 0, 0.5 -> mean 0.5, unbiased std 0.5 -> advantages 1, -1, 0
    adv, stats = group_advantages([1.0, 0.0, 0.5, None, 0.3, 0.3], ["a", "a", "a", "a", "b", "b"], "grpo", eps=0.0)
    assert adv[:3] == pytest.approx([1.0, -1.0, 0.0])
    assert adv[3] is None                      # unjudged: masked
    assert adv[4] is None and adv[5] is None   # zero variance group: dropped
    assert stats == {"masked_unjudged": 1, "zero_variance_groups": 1, "groups": 2, "trained": 3}


def test_dr_grpo_and_rloo_by_hand():
    adv, _ = group_advantages([1.0, 0.0, 0.5], ["g"] * 3, "dr_grpo")
    assert adv == pytest.approx([0.5, -0.5, 0.0])
    # RLOO: 1 - mean(0, 0.5) = 0.75; 0 - mean(1, 0.5) = -0.75; 0.5 - mean(1, 0) = 0
    adv, _ = group_advantages([1.0, 0.0, 0.5], ["g"] * 3, "rloo")
    assert adv == pytest.approx([0.75, -0.75, 0.0])
    with pytest.raises(ValueError, match="unknown advantage mode"):
        group_advantages([1.0], ["g"], "ppo")


def test_mask_turns_drops_only_the_flagged_turns_tokens():
    # prompt (0 0), turn 0: 3 tokens, observation (0 0), turn 1: 2 tokens, observation (0), turn 2: 1 token
    mask = [0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 1]
    assert mask_turns(mask, [3, 2, 1], [False, True, False]) == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    assert mask_turns(mask, [3, 2, 1], [True, False, True]) == [0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert mask_turns(mask, [3, 2, 1], [False] * 3) == mask
    with pytest.raises(ValueError, match="not a token-exact trajectory"):
        mask_turns(mask, [3, 2], [False, False])   # the turns account for 5 of the 6 generated tokens


def test_loss_mask_never_credits_a_malformed_turn():
    from rl.group import loss_mask
    from rollout.trajectory import Trajectory, Turn
    turns = [Turn(text="<command>ls</command>", action="command", num_generated_tokens=2),
             Turn(text="<report>oops", action="format_error", num_generated_tokens=3),
             Turn(text="<report>...</report>", action="report", num_generated_tokens=1)]
    t = Trajectory(task_id="t", messages=[], token_ids=list(range(10)), response_mask=[0, 1, 1, 0, 1, 1, 1, 0, 0, 1],
                   logprobs=[0.0] * 10, turns=turns)
    assert loss_mask(t, 1.5) == [0, 1, 1, 0, 0, 0, 0, 0, 0, 1]          # recovered: the bad report is not reinforced
    assert loss_mask(t, -0.5) == t.response_mask                           # below the group: all of it is pushed down
    assert loss_mask(t, 1.5, reinforce_malformed=True) == t.response_mask


def test_token_logprobs_align_with_next_token():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = torch.tensor([[0, 1, 2]])
    lp = token_logprobs(logits, ids)
    assert lp.shape == (1, 2)
    assert lp[0].tolist() == pytest.approx([math.log(0.25), math.log(0.8)], abs=1e-6)


def test_logits_at_kept_positions_only_give_the_same_logprobs_and_entropy():
    # 2 sequences of 3 tokens; row 0 trains position 1, row 1 trains position 0: keep = [0, 1], not 2.
    mask = torch.tensor([[0, 1, 0], [1, 0, 0]])
    keep = positions_to_keep(mask)
    assert keep.tolist() == [0, 1]
    full = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]],
                                   [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]]]))
    ids = torch.tensor([[0, 1, 2, 0], [2, 0, 1, 1]])
    lp = token_logprobs(full[:, keep], ids, keep)
    assert lp.shape == (2, 3)
    assert lp[0].tolist() == pytest.approx([math.log(0.25), math.log(0.8), 0.0], abs=1e-6)
    assert lp[1].tolist() == pytest.approx([math.log(0.7), math.log(0.3), 0.0], abs=1e-6)
    ent = entropy(full[:, keep], keep, 3)
    assert torch.allclose(ent[:, :2], entropy(full)[:, :2], atol=1e-6)
    assert ent[:, 2].tolist() == [0.0, 0.0]


def test_aggregation_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, m, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(x, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(x, m, "seq_mean_token_sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(x, m, "constant", norm=8).item() == pytest.approx(10 / 8)
    assert aggregate(x, m, "token_mean", norm=20).item() == pytest.approx(0.5)


def test_policy_loss_clip_higher_and_tis_by_hand():
    # one sequence, 3 tokens; ratios e^0.5=1.6487, e^-0.5=0.6065, 1
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.5, -0.5, 0.0]])
    rollout = torch.tensor([[0.0, 0.0, math.log(0.25)]])   # token 3: pi_old/pi_rollout = 4 -> capped at 2
    mask = torch.ones(1, 3)
    loss, m = policy_loss(new, old, rollout, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28, tis_cap=2.0)
    # A=+1: token1 max(-1.6487, -1.28) = -1.28 (clipped high); token2 max(-0.6065, -0.8) = -0.6065;
    # token3 max(-1, -1) = -1, times tis 2 -> -2. mean = (-1.28 - 0.6065 - 2) / 3
    assert loss.item() == pytest.approx((-1.28 - math.exp(-0.5) - 2.0) / 3, abs=1e-5)
    assert m["clip_frac"] == pytest.approx(1 / 3)
    assert m["tis_capped_frac"] == pytest.approx(1 / 3)
    # A=-1: token2 max(0.6065, 0.8) = 0.8 (clipped low); token1 max(1.6487, 1.28) = 1.6487
    loss, _ = policy_loss(new, old, old, torch.tensor([-1.0]), mask, clip_low=0.2, clip_high=0.28, tis_cap=2.0)
    assert loss.item() == pytest.approx((math.exp(0.5) + 0.8 + 1.0) / 3, abs=1e-5)


def test_policy_gradient_sign_raises_good_tokens():
    lp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = policy_loss(lp, lp.detach(), lp.detach(), torch.tensor([2.0]), torch.ones(1, 2),
                          clip_low=0.2, clip_high=0.2, tis_cap=2.0)
    loss.backward()
    assert (lp.grad < 0).all()   # descending the loss raises the logprob of positively rewarded tokens


def test_k3_kl_by_hand():
    d = torch.tensor([0.0, 1.0])
    assert k3_kl(torch.zeros(2), d).tolist() == pytest.approx([0.0, math.e - 2])


def test_lr_schedule_by_hand():
    assert lr_multiplier(0, 10, 2, "cosine", 0.1) == pytest.approx(0.5)
    assert lr_multiplier(1, 10, 2, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(2, 10, 2, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_multiplier(6, 10, 2, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(10, 10, 2, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_multiplier(7, 10, 0, "constant", 0.1) == 1.0


def test_packing_and_shift():
    # longest first: 5+4 fit in 2*5=10 padded tokens; then 3 and 1 (2*3=6)
    assert pack_by_tokens([5, 3, 4, 1], max_tokens=10) == [[0, 2], [1, 3]]
    assert pack_by_tokens([12, 2], max_tokens=10) == [[0], [1]]
    assert shifted([[9, 1, 2], [9, 3]], 3).tolist() == [[1, 2], [3, 0]]


def test_shared_prefix_stops_before_any_trained_token_and_keeps_a_token_of_each():
    def sample(ids, first_trained):
        return {"token_ids": ids, "mask": [int(i >= first_trained) for i in range(len(ids))]}

    system = list(range(100, 120))   # 20 tokens every sample begins with
    a, b = sample(system + [1, 2, 3, 4], 22), sample(system + [1, 2, 9, 9, 9], 23)
    assert shared_prefix([a, b]) == system + [1]   # agree on 22 tokens; a trains token 22 (its logit: position 21)
    assert shared_prefix([a, sample(system + [1, 2, 3, 4], 24)]) == system + [1]
    assert shared_prefix([sample(system + [1, 7], 30), sample(system + [1, 7, 8], 30)]) == system + [1]   # keeps a token of its own
    assert shared_prefix([sample(system + [5], 30), sample(system + [6], 30)]) == system
    assert shared_prefix([a, b], min_tokens=22) == []   # too short to be worth a forward
    assert shared_prefix([a]) == [] and shared_prefix([a, sample([7] + system, 22)]) == []

# ---- GSPO ------------------------------------------------------------------------------------------------

def _gspo_case():
    # seq 0: trained tokens 0, 1 (log ratios 0.2, -0.1; the masked 5.0 must not count): s0 = e^0.05 = 1.0513
    # seq 1: tokens 0-2 (log ratios -0.3, 0, 0): s1 = e^-0.1 = 0.9048; pi_old/pi_rollout = e^0.5 per token
    old = torch.tensor([[0.1, -0.4, -1.0], [-0.2, -0.7, -0.3]])
    new = old + torch.tensor([[0.2, -0.1, 5.0], [-0.3, 0.0, 0.0]])
    rollout = old - torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    return new, old, rollout, mask


def test_gspo_clips_whole_sequences_by_hand():
    new, old, rollout, mask = _gspo_case()
    lp = new.clone().requires_grad_(True)
    loss, m = gspo_loss(lp, old, rollout, torch.tensor([1.0, 1.0]), mask, clip_low=0.05, clip_high=0.04,
                        tis_cap=1.5)
    s0, s1 = math.exp(0.05), math.exp(-0.1)
    # seq 0, A=+1: max(-1.0513, -1.04) = -1.04 at each token (clipped high: no gradient)
    # seq 1, A=+1: max(-0.9048, -0.95) = -0.9048 (below 1 - 0.05, but A > 0: the pessimistic bound keeps
    # the unclipped one), times its sequence TIS weight min(e^0.5, 1.5) = 1.5
    # seq_mean_token_mean: (-1.04 + -0.9048 * 1.5) / 2
    assert loss.item() == pytest.approx((-1.04 - 1.5 * s1) / 2, abs=1e-6)
    assert m["clip_frac"] == pytest.approx(0.5)                  # one sequence of two
    assert m["ratio_mean"] == pytest.approx((s0 + s1) / 2, abs=1e-6)
    assert m["tis_weight_mean"] == pytest.approx((1.0 + 1.5) / 2)
    assert m["tis_capped_frac"] == pytest.approx(0.5)
    loss.backward()
    # clipped sequence: no gradient; unclipped: every token gets -(1/2)(1/3) * 1.5 * s1, the gradient of
    # s1 = exp(mean log ratio) itself (d s1 / d lp_t = s1 / 3)
    assert lp.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0])
    assert lp.grad[1].tolist() == pytest.approx([-0.25 * s1] * 3, abs=1e-6)
    # A=-1 flips it: seq 0 (ratio above 1 + 0.04) keeps the unclipped 1.0513, seq 1 (below 1 - 0.05) is
    # clipped to 0.95 * 1.5
    loss, m = gspo_loss(new, old, rollout, torch.tensor([-1.0, -1.0]), mask, clip_low=0.05, clip_high=0.04,
                        tis_cap=1.5)
    assert loss.item() == pytest.approx((s0 + 0.95 * 1.5) / 2, abs=1e-6)
    assert m["clip_frac"] == pytest.approx(0.5)


def test_gspo_token_form_has_the_sequence_level_gradient():
    """GSPO-token with one advantage per sequence = GSPO: the gradient of the stop-gradient token form
    equals that of mean_i max(-A_i s_i, -A_i clip(s_i)) * w_i with s_i computed directly."""
    torch.manual_seed(0)
    old = -torch.rand(4, 6)
    new = old + 0.05 * torch.randn(4, 6)
    rollout = old + 0.01 * torch.randn(4, 6)
    mask = (torch.rand(4, 6) > 0.3).long()
    mask[:, 0] = 1
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    kw = dict(clip_low=0.02, clip_high=0.03, tis_cap=2.0)
    a = new.clone().requires_grad_(True)
    loss, _ = gspo_loss(a, old, rollout, adv, mask, **kw)
    loss.backward()
    b = new.clone().requires_grad_(True)
    mf = mask.float()
    s = torch.exp(((b - old) * mf).sum(-1) / mf.sum(-1))
    w = torch.exp(((old - rollout) * mf).sum(-1) / mf.sum(-1)).clamp(max=2.0)
    ref = (torch.maximum(-adv * s, -adv * s.clamp(1 - 0.02, 1 + 0.03)) * w).mean()
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert (a.grad[mask == 0] == 0).all()


def test_gspo_at_the_old_policy_is_ratio_one_and_unclipped():
    new, _, _, mask = _gspo_case()
    loss, m = gspo_loss(new, new, new, torch.tensor([1.0, -1.0]), mask, clip_low=3e-4, clip_high=4e-4,
                        tis_cap=2.0)
    assert m["ratio_mean"] == pytest.approx(1.0) and m["clip_frac"] == 0.0
    assert loss.item() == pytest.approx(0.0, abs=1e-7)   # (-1 + 1) / 2
    assert effective_loss_agg("gspo", "token_mean") == "seq_mean_token_mean"
    assert effective_loss_agg("token", "constant") == "constant"


# ---- dynamic sampling and the overlong filter -------------------------------------------------------------

def test_informative_groups_are_the_ones_group_advantages_keeps():
    cases = [[1.0, 0.0], [0.5, 0.5, 0.5], [1.0, None, None], [None, None], [0.2, None, 0.3], [0.0]]
    assert [informative(c) for c in cases] == [True, False, False, False, True, False]
    rewards = [r for c in cases for r in c]
    gids = [str(k) for k, c in enumerate(cases) for _ in c]
    adv, stats = group_advantages(rewards, gids)
    kept = {g for g, a in zip(gids, adv) if a is not None}
    assert kept == {str(k) for k, c in enumerate(cases) if informative(c)}
    assert stats["zero_variance_groups"] == sum(not informative(c) for c in cases if any(r is not None for r in c))


def test_dynamic_sampling_keeps_draw_order_and_draws_by_the_observed_rate():
    from rl.dynamic_sampling import extra_draws, keep_groups, replacement_order
    assert keep_groups([False, True, True, False, True], 2) == [1, 2]
    assert keep_groups([False, True], 3) == [1]                     # the budget ran out: what there is
    # share informative so far (k + 1) / (n + 2): 4 of 8 -> 0.5, so 4 more needed -> 8 draws
    assert extra_draws(4, 4, 8, 100) == 8
    assert extra_draws(1, 7, 8, 100) == 2                           # 0.8 -> ceil(1.25)
    assert extra_draws(8, 0, 8, 5) == 5                             # within the budget left
    assert extra_draws(0, 8, 8, 5) == 0 and extra_draws(3, 1, 8, 0) == 0
    ids = [f"t{i}" for i in range(6)]
    order = replacement_order(ids, ["t1", "t4"], seed=7, count=4)
    assert sorted(order) == ["t0", "t2", "t3", "t5"]                 # the tasks not in the step first
    assert order == replacement_order(ids, ["t1", "t4"], seed=7, count=4)   # a pure function of the seed
    longer = replacement_order(ids, ["t1", "t4"], seed=7, count=9)
    assert longer[:4] == order and set(longer[4:]) <= set(ids)      # then every task again
    assert replacement_order(ids, ids, seed=7, count=0) == []


def _group(task, rewards):
    from rollout.trajectory import Trajectory
    return [Trajectory(task_id=task, messages=[], token_ids=[], response_mask=[], logprobs=[], reward=r,
                       group_id=task) for r in rewards]


def test_sample_groups_replaces_groups_that_teach_nothing():
    import asyncio

    from rl.dynamic_sampling import sample_groups
    rewards = {"a": [1, 1], "b": [0, 1], "c": [0, 0], "d": [1, 0], "e": [0.5, 0.5], "f": [0, 1], "g": [1, 0]}
    rounds = []

    async def run_round(tasks, rnd):
        rounds.append((rnd, list(tasks)))
        return [_group(t, rewards[t]) for t in tasks]

    groups, stats = asyncio.run(sample_groups(["a", "b", "c"], ["d", "e", "f", "g"], run_round, 3, dynamic=True))
    # round 0: 1 of 3 informative -> need 2, share (1+1)/(3+2) = 0.4 -> draw 5, the 4 there are
    assert rounds == [(0, ["a", "b", "c"]), (1, ["d", "e", "f", "g"])]
    assert [g[0].task_id for g in groups] == ["b", "d", "f"]         # draw order: the step's own first
    assert stats == {"groups_drawn": 7, "groups_dropped_zero_variance": 3, "groups_dropped_surplus": 1,
                     "extra_tasks_drawn": 4, "sampling_rounds": 2}
    rounds.clear()
    groups, stats = asyncio.run(sample_groups(["a", "b", "c"], [], run_round, 3, dynamic=False))
    assert rounds == [(0, ["a", "b", "c"])] and len(groups) == 3     # off: every group, as before
    assert stats["groups_dropped_zero_variance"] == 2 and stats["extra_tasks_drawn"] == 0
    # drawn ahead: the first replacements run in round 0, and the step needs no second round
    rounds.clear()
    groups, stats = asyncio.run(sample_groups(["a", "b", "c"], ["d", "e", "f", "g"], run_round, 2, dynamic=True,
                                              ahead=1))
    assert rounds == [(0, ["a", "b", "c", "d"])] and [g[0].task_id for g in groups] == ["b", "d"]
    assert stats == {"groups_drawn": 4, "groups_dropped_zero_variance": 2, "groups_dropped_surplus": 0,
                     "extra_tasks_drawn": 1, "sampling_rounds": 1}
    # ... or a later round draws from what the budget has left: 2 of 5 informative, need 1,
    # (2+1)/(5+2) -> draw 3, 2 left
    rounds.clear()
    groups, stats = asyncio.run(sample_groups(["a", "b", "c"], ["d", "e", "f", "g"], run_round, 3, dynamic=True,
                                              ahead=2))
    assert rounds == [(0, ["a", "b", "c", "d", "e"]), (1, ["f", "g"])]
    assert [g[0].task_id for g in groups] == ["b", "d", "f"] and stats["groups_dropped_surplus"] == 1
    rounds.clear()   # more ahead than there are replacements, or dynamic sampling off
    asyncio.run(sample_groups(["a", "c"], ["b"], run_round, 2, dynamic=True, ahead=5))
    asyncio.run(sample_groups(["a", "b"], ["d"], run_round, 2, dynamic=False, ahead=1))
    assert rounds == [(0, ["a", "c", "b"]), (0, ["a", "b"])]


def test_overlong_filter_masks_trajectories_ending_on_a_cut_turn():
    from rl.group import filter_overlong, overlong
    from rollout.trajectory import Turn
    a, b, c, d = _group("x", [1.0, 0.0, 1.0, 0.0])
    a.turns = [Turn(text="", action="format_error", cut_off=True), Turn(text="", action="report")]
    b.turns = [Turn(text="", action="command"), Turn(text="", action="format_error", cut_off=True)]
    d.turns = [Turn(text="", action="format_error", cut_off=True)]
    assert [overlong(t) for t in (a, b, c, d)] == [False, True, False, True]
    adv, n = filter_overlong([a, b, c, d], [1.0, -1.0, 1.0, None])
    assert adv == [1.0, None, 1.0, None] and n == 1   # d had no advantage to take out


def test_dual_clip_caps_the_loss_of_a_negative_advantage_by_hand():
    # ratios 5, 2, 0.5; A = -1, clip 0.2/0.28, clip_ratio_c = 3
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[5.0, 2.0, 0.5]])).requires_grad_()
    loss, m = policy_loss(new, old, old, torch.tensor([-1.0]), torch.ones(1, 3), clip_low=0.2, clip_high=0.28,
                          tis_cap=2.0, clip_ratio_c=3.0)
    # token 1: max(5, 1.28) = 5 > 3 -> 3 (dual clip); token 2: max(2, 1.28) = 2; token 3: max(0.5, 0.8) = 0.8
    assert loss.item() == pytest.approx((3.0 + 2.0 + 0.8) / 3, abs=1e-5)
    assert m["dual_clip_frac"] == pytest.approx(1 / 3)
    loss.backward()
    # capped (token 1) and clipped (token 3) tokens get no gradient; token 2: d(ratio)/d(logp) / 3 = 2 / 3
    assert new.grad[0].tolist() == pytest.approx([0.0, 2 / 3, 0.0], abs=1e-6)
    # a positive advantage is never dual-clipped: max(-5, -1.28) = -1.28
    loss, m = policy_loss(new.detach()[:, :1], old[:, :1], old[:, :1], torch.tensor([1.0]), torch.ones(1, 1),
                          clip_low=0.2, clip_high=0.28, tis_cap=2.0, clip_ratio_c=3.0)
    assert loss.item() == pytest.approx(-1.28) and m["dual_clip_frac"] == 0.0


def test_log_ratio_is_clamped_so_far_off_tokens_stay_finite():
    # token 1 is 100 nats off (e^100 overflows float32); token 2 is untrained and 200 nats off
    lp = torch.tensor([[100.0, 200.0, 0.0]], requires_grad=True)
    old, mask = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 1.0]])
    for adv in (1.0, -1.0):
        lp.grad = None
        loss, m = policy_loss(lp, old, old, torch.tensor([adv]), mask, clip_low=0.2, clip_high=0.28, tis_cap=2.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(lp.grad).all(), (adv, loss, lp.grad)
        # A=+1: (-1.28 + -1) / 2; A=-1: (min(e^20, 3) + 1) / 2 = 2 (dual clip)
        assert loss.item() == pytest.approx((-1.28 - 1.0) / 2 if adv > 0 else 2.0, abs=1e-5)
        assert m["ratio_mean"] == pytest.approx((math.exp(LOG_RATIO_MAX) + 1) / 2, rel=1e-5)


def test_sequences_without_a_trained_token_do_not_count_in_seq_means():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [5.0, 6.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])   # the third: every turn masked
    assert trained_sequences(m).item() == 2
    assert aggregate(x, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)   # not / 3
    assert aggregate(x, m, "seq_mean_token_sum").item() == pytest.approx((6 + 4) / 2)
    assert aggregate(x, m, "seq_mean_token_mean", norm=4).item() == pytest.approx((2 + 4) / 4)   # a global count
    assert aggregate(x, torch.zeros(3, 3), "seq_mean_token_mean").item() == 0.0   # nothing trained: 0, not nan


def test_loss_normaliser_by_hand_for_every_mode():
    # token-aligned masks; position 0 is never a target (nothing precedes it), so its 1 does not count
    masks = [[0, 1, 1, 1],   # 3 trained tokens
             [1, 1, 0, 0],   # 1 (positions 1..3: one)
             [0, 0, 0],      # none: every turn left out of the loss
             [0, 0, 1]]      # 1
    assert loss_normaliser(masks, "token_mean") == 5.0
    assert loss_normaliser(masks, "seq_mean_token_mean") == 3.0   # the untrained sequence is not counted
    assert loss_normaliser(masks, "seq_mean_token_sum") == 3.0
    assert loss_normaliser(masks, "constant", tokens_per_sequence=10) == 40.0   # every sequence: a budget
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):   # nothing trained: 0, not nan
        assert loss_normaliser([[0, 0], [1, 0]], mode) == 1.0
    with pytest.raises(ValueError, match="tokens_per_sequence"):
        loss_normaliser(masks, "constant")
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        loss_normaliser(masks, "seq_sum")


def test_split_batches_add_up_to_the_whole_with_the_step_normaliser():
    """The loss of a step split into micro-batches and dealt over ranks (empty slots included), each
    piece divided by the step's loss_normaliser, adds up to the whole batch's, which is the
    hand-computed one; a piece alone (no norm) divides by its own count, as loss_normaliser counts."""
    from rl.group import deal
    masks = [[0, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0], [0, 0, 1]]
    m = shifted(masks, 4)                    # [[1,1,1], [1,0,0], [0,0,0], [0,1,0]]
    x = torch.arange(1.0, 13.0).view(4, 3)   # [[1,2,3], [4,5,6], [7,8,9], [10,11,12]]
    by_hand = {"token_mean": (1 + 2 + 3 + 4 + 11) / 5, "seq_mean_token_sum": (6 + 4 + 11) / 3,
               "seq_mean_token_mean": (2 + 4 + 11) / 3, "constant": 21 / 40}
    for mode, expected in by_hand.items():
        norm = loss_normaliser(masks, mode, tokens_per_sequence=10)
        assert aggregate(x, m, mode, norm).item() == pytest.approx(expected)
        for rows in ([[0], [1, 2], [3]], [[0, 1], [2, 3]], [[2], [0, 3], [1]]):
            ranks = deal(rows, 2, per_rank=3)   # 2 ranks x 3 slots: some empty
            total = sum(aggregate(x[r], m[r], mode, norm) for rank in ranks for r in rank if r)
            assert total.item() == pytest.approx(expected), (mode, rows)
        if mode != "constant":
            for r in ([0], [1, 2], [2], [0, 3]):
                local = loss_normaliser([masks[i] for i in r], mode)
                assert aggregate(x[r], m[r], mode).item() == pytest.approx(aggregate(x[r], m[r], mode, local).item())


def test_a_micro_batch_without_trained_tokens_merges_cleanly():
    from rl.group import merge_metrics
    loss, m = policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([1.0]),
                          torch.zeros(1, 2), clip_low=0.2, clip_high=0.28, tis_cap=2.0, agg="seq_mean_token_mean")
    assert loss.item() == 0.0
    # a piece (rank, mini-batch) with no trained token reports no per-token metric: the others' stand,
    # whichever piece comes first
    pieces = [{"loss": 3.0}, {"loss": 1.0, "clip_frac": 0.5, "logprob_mismatch_max": 0.1},
              {"loss": 2.0, "clip_frac": 0.1, "logprob_mismatch_max": 0.3}]
    assert merge_metrics(pieces) == pytest.approx({"loss": 2.0, "clip_frac": 0.3, "logprob_mismatch_max": 0.3})


def test_temperature_divides_fp32_logits_as_vllm_does():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 6, 64, generator=g) * 8).to(torch.bfloat16)   # a bf16 forward's logits
    ids = torch.randint(0, 64, (2, 6), generator=g)
    reference = token_logprobs(logits.float() / 0.7, ids)                   # vLLM: fp32 logits / T
    assert tempered(logits, 0.7).dtype == torch.float32
    assert torch.equal(token_logprobs(tempered(logits, 0.7), ids), reference)
    assert (token_logprobs(logits / 0.7, ids) - reference).abs().max() > 1e-3   # dividing in bf16 rounds
    assert torch.equal(tempered(logits, 1.0), logits.float())



def test_sft_targets_the_assistant_or_everything_after_the_prompt():
    from rl.group import sft_samples
    from rollout.trajectory import Trajectory
    # prompt (3 tokens) | command (2, generated) | observation (3) | report (2, generated)
    t = Trajectory(task_id="t", messages=[], token_ids=list(range(10)), response_mask=[0, 0, 0, 1, 1, 0, 0, 0, 1, 1],
                   logprobs=[0.0] * 10, prompt_len=3)
    assert sft_samples([t])[0]["mask"] == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    assert sft_samples([t], train_on_observations=True)[0]["mask"] == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert t.response_mask == [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]          # the trajectory itself is not changed


def test_sft_never_targets_a_turn_the_protocol_rejected():
    """A demonstration that recovers from a format error: prompt (2) | malformed report (3, generated) |
    format error (2) | report (2, generated). SFT targets the report only; with the observations too,
    the format error message is a target (it is what the environment says), the malformed turn is not."""
    from rl.group import sft_samples
    from rollout.trajectory import Trajectory, Turn
    t = Trajectory(task_id="t", messages=[], token_ids=list(range(9)), response_mask=[0, 0, 1, 1, 1, 0, 0, 1, 1],
                   logprobs=[0.0] * 9, prompt_len=2,
                   turns=[Turn(text="<report>bad", action="format_error", num_generated_tokens=3),
                          Turn(text="<report>good</report>", action="report", num_generated_tokens=2)])
    assert sft_samples([t])[0]["mask"] == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert sft_samples([t], train_on_observations=True)[0]["mask"] == [0, 0, 0, 0, 0, 1, 1, 1, 1]


def test_penalties_count_this_turns_output_as_vllm_does():
    """Frequency and presence penalties (RolloutSampling), checked against a loop written from vLLM's
    definition: the logits predicting each generated token lose frequency x n + presence for every
    token generated n > 0 times earlier in the same turn (not the prompt, not earlier turns), then
    are divided by the temperature. Token 5 repeats inside turn 1 and again in turn 2; turn 2 must
    not count turn 1's."""
    from rl.algos import RolloutSampling, sampled_logits, turn_output_counts
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([[1, 2, 5, 5, 3, 5, 7, 7, 5, 5, 0], [4, 5, 6, 5, 6, 5, 0, 0, 0, 0, 0]])
    generated = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]])
    logits = torch.randn(2, 11, 9, generator=g)
    from rollout.config import SamplingConfig
    sampling = RolloutSampling.from_config(SamplingConfig(temperature=0.7, frequency_penalty=0.9, presence_penalty=0.4))
    assert sampling == RolloutSampling(0.7, frequency_penalty=0.9, presence_penalty=0.4)
    expected = logits.clone()
    for b in range(2):
        for p in range(10):
            if not generated[b, p + 1]:
                continue
            start = p + 1
            while start > 0 and generated[b, start - 1]:
                start -= 1
            for tok in set(ids[b, start:p + 1].tolist()):
                n = ids[b, start:p + 1].tolist().count(tok)
                expected[b, p, tok] -= 0.9 * n + 0.4
    expected = expected / 0.7
    assert torch.allclose(sampled_logits(logits, sampling, ids, generated), expected)
    # the row predicting the second token of turn 2 (position 7) has seen one 7, not turn 1's 5s
    rows, tokens, n = turn_output_counts(ids[0], generated[0], None)
    assert sorted(zip(rows.tolist(), tokens.tolist(), n.tolist())) == [
        (2, 5, 1), (3, 5, 2), (7, 7, 1), (8, 5, 1), (8, 7, 1)]
    # only some rows kept (logits_to_keep): the same values at those positions
    keep = torch.tensor([3, 8])
    assert torch.allclose(sampled_logits(logits[:, keep], sampling, ids, generated, keep), expected[:, keep])
    # no penalty: exactly the tempered logits; the gradient flows through the penalized ones
    assert torch.equal(sampled_logits(logits, RolloutSampling(0.7)), tempered(logits, 0.7))
    x = logits.clone().requires_grad_()
    sampled_logits(x, sampling, ids, generated).logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_top_entropy_mask_keeps_each_sequences_forking_tokens_by_hand():
    from rl.algos import top_entropy_mask
    ent = torch.tensor([[0.1, 0.5, 0.9, 0.2, 0.7], [0.3, 0.3, 0.1, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0, 1], [0, 1, 1, 1, 0]])
    # row 0: 4 trained tokens, half -> the two highest of 0.1, 0.5, 0.9, 0.7 (0.2 is not trained);
    # row 1: 3 trained, ceil(1.5) = 2 -> 0.3 (position 1; position 0's 0.3 is not trained) and 0.1
    assert top_entropy_mask(ent, mask, 0.5).tolist() == [[0, 0, 1, 0, 1], [0, 1, 1, 0, 0]]
    assert top_entropy_mask(ent, mask, 0.2).tolist() == [[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]]
    assert top_entropy_mask(ent, mask, 1.0) is mask
    tied = torch.tensor([[0.4, 0.4, 0.4]])   # ties: the earlier position first
    assert top_entropy_mask(tied, torch.ones(1, 3, dtype=torch.long), 0.5).tolist() == [[1, 1, 0]]
    # per sequence, so a split into micro-batches keeps the same tokens as the whole batch
    assert torch.equal(torch.cat([top_entropy_mask(ent[i:i + 1], mask[i:i + 1], 0.5) for i in range(2)]),
                       top_entropy_mask(ent, mask, 0.5))


def test_top_entropy_mask_leaves_confident_tokens_out_of_the_policy_gradient():
    # one sequence, a negative advantage: position 0 is a sure protocol token (p ~ 1), position 1 an open
    # choice. With every token trained the sure token is pushed down too; with the forking half, only the
    # open one moves.
    from rl.algos import top_entropy_mask
    logits = torch.tensor([[[12.0, 0.0, 0.0], [0.5, 0.4, 0.3], [0.0, 0.0, 0.0]]], requires_grad=True)
    ids = torch.tensor([[0, 0, 1]])
    lp = token_logprobs(logits, ids)
    ent = entropy(logits.detach())
    full = torch.tensor([[1, 1]])
    for frac, moved in ((1.0, [True, True]), (0.5, [False, True])):
        logits.grad = None
        mask = top_entropy_mask(ent, full, frac)
        loss, _ = policy_loss(lp, lp.detach(), lp.detach(), torch.tensor([-1.0]), mask, clip_low=0.2,
                              clip_high=0.2, tis_cap=2.0)
        loss.backward(retain_graph=True)
        assert [bool(logits.grad[0, i].abs().sum() > 0) for i in range(2)] == moved


def test_surprisal_ranking_trains_a_slip_that_the_entropy_ranking_leaves_out():
    # position 0: the policy is sure of token 0 (p ~ 1) but token 1 was sampled (a slip: `fuure` for
    # `failure`); position 1: an open choice, its likelier token sampled. With a negative advantage and
    # half the tokens trained, the entropy ranking moves only the open choice; the surprisal ranking moves
    # the slip, whose probability is then pushed down.
    from rl.algos import fork_scores, top_entropy_mask
    logits = torch.tensor([[[12.0, 0.0, 0.0], [0.5, 0.4, 0.3], [0.0, 0.0, 0.0]]], requires_grad=True)
    ids = torch.tensor([[0, 1, 0]])
    lp = token_logprobs(logits, ids)
    ent = entropy(logits.detach())
    assert ent[0, 0] < ent[0, 1] and lp[0, 0] < lp[0, 1]   # sure but slipped; open but likely
    for kind, moved in (("entropy", [False, True]), ("surprisal", [True, False])):
        logits.grad = None
        mask = top_entropy_mask(fork_scores(kind, ent, lp), torch.tensor([[1, 1]]), 0.5)
        loss, _ = policy_loss(lp, lp.detach(), lp.detach(), torch.tensor([-1.0]), mask, clip_low=0.2,
                              clip_high=0.2, tis_cap=2.0)
        loss.backward(retain_graph=True)
        assert [bool(logits.grad[0, i].abs().sum() > 0) for i in range(2)] == moved
        if kind == "surprisal":   # gradient descent lowers the slipped token's logit
            assert logits.grad[0, 0, 1] > 0
    with pytest.raises(ValueError, match="surprisal"):
        fork_scores("perplexity", ent, lp)
