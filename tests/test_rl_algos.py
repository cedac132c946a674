"""GRPO/SFT math against hand-computed values."""
import math

import pytest
import torch

from rl.algos import (aggregate, entropy, group_advantages, k3_kl, lr_multiplier, mask_turns, pack_by_tokens,
                      policy_loss, positions_to_keep, shifted, token_logprobs)


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
