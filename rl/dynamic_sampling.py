"""Dynamic sampling (DAPO, Yu et al. 2025) as pure functions.

A group whose rollouts all got the same reward (or that has fewer than two judged) has no advantage
to learn from: GRPO drops it, and a step with many such groups trains on a handful of tasks. With
`trainer.grpo.dynamic_sampling_max_extra > 0` a step draws more tasks until it has
`tasks_per_step` informative groups, within that budget of extra tasks; `dynamic_sampling_ahead` of
them run with the step's own tasks, so that most steps need one round, not two. These functions decide
which groups count, which to keep, how many tasks to draw next and which ones; `sample_groups`
runs them over rounds of a step's rollouts, which the GRPO step (cluster/grpo.py) runs and judges.
"""
from __future__ import annotations

import math
import random
from typing import Hashable, Sequence, TypeVar

from rl.algos import informative

__all__ = ["informative", "keep_groups", "extra_draws", "replacement_order", "group_rewards"]

K = TypeVar("K", bound=Hashable)


def group_rewards(group: Sequence) -> list[float | None]:
    """The rewards the trainer will use: None for a failed episode (as rl.group.TrainerGroup.grpo_step)."""
    return [t.reward if t.error is None else None for t in group]


def keep_groups(flags: Sequence[bool], target: int) -> list[int]:
    """Indices of the groups to train: the first `target` informative ones in draw order (so the
    step's own tasks come first and replacements only fill the gaps)."""
    return [i for i, f in enumerate(flags) if f][:target]


def extra_draws(need: int, informative_so_far: int, drawn: int, budget_left: int) -> int:
    """How many tasks to draw in the next round to find `need` more informative groups.

    Each round is a full rollout + judge pass, so drawing exactly `need` could take many rounds;
    instead it draws need / p, p the share of informative groups so far with one pseudo-count each
    way ((k + 1) / (n + 2): never 0 or 1), within what is left of the budget. 0 = stop.
    """
    if need <= 0 or budget_left <= 0:
        return 0
    p = (informative_so_far + 1) / (drawn + 2)
    return min(budget_left, math.ceil(need / p))


def replacement_order(ids: Sequence[K], taken: Sequence[K], seed: int, count: int) -> list[K]:
    """The first `count` replacement tasks of a step, a pure function of the seed (so a resumed run
    draws the same): the tasks not in the step yet in a seeded random order, then, if those run out,
    every task again in fresh seeded orders (a repeat gets other sampling seeds, see the driver)."""
    if count <= 0:   # dynamic sampling off: no order to draw
        return []
    rng = random.Random(seed)
    seen = set(taken)
    order = [k for k in ids if k not in seen]
    rng.shuffle(order)
    order = order[:count]
    while len(order) < count and ids:
        again = list(ids)
        rng.shuffle(again)
        order += again[: count - len(order)]
    return order


async def sample_groups(batch: list, replacements: list, run_round, target: int, dynamic: bool,
                        ahead: int = 0) -> tuple[list[list], dict[str, int]]:
    """A step's groups, with dynamic sampling when `dynamic`: after `batch` and the first `ahead`
    `replacements` (run together, in round 0), rounds of the next replacements run while fewer than
    `target` groups are informative, and only the first `target` informative groups are returned.
    Without it every group of `batch` is returned (the trainer drops the uninformative ones itself).
    `run_round(tasks, round)` runs and judges the tasks' groups."""
    used = min(ahead, len(replacements)) if dynamic else 0
    groups = list(await run_round(list(batch) + list(replacements[:used]), 0))
    flags = [informative(group_rewards(grp)) for grp in groups]
    rounds = 0
    while dynamic:
        n = extra_draws(target - sum(flags), sum(flags), len(groups), len(replacements) - used)
        if n == 0:
            break
        rounds += 1
        more = await run_round(replacements[used:used + n], rounds)
        used += n
        groups += more
        flags += [informative(group_rewards(grp)) for grp in more]
    keep = keep_groups(flags, target) if dynamic else list(range(len(groups)))
    stats = {"groups_drawn": len(groups), "groups_dropped_zero_variance": flags.count(False),
             "groups_dropped_surplus": sum(flags) - sum(flags[i] for i in keep),
             "extra_tasks_drawn": used, "sampling_rounds": rounds + 1}
    return [groups[i] for i in keep], stats
