"""loss=plackett_luce (DPO on whole rankings): term-by-term hand computations, DPO at K = 2, padding, permutation
invariance, ties (Efron and Breslow against the exact likelihood by enumeration of orders), top_m, gradient
directions, the logged reward pairs (masked, no host sync), hyperparameter checks and the conf option; and the
ranking metrics against scipy."""

import itertools
import math

import pytest
import scipy.stats
import torch
from helpers import compose
from hydra.utils import instantiate

from dpo_lightning.data.rankings import ranks_from_scores
from dpo_lightning.errors import ConfigError
from dpo_lightning.losses import LossOutput, PairLogps, RankingLogps
from dpo_lightning.losses.dpo import DPO, dpo_loss
from dpo_lightning.losses.plackett_luce import TIES, PlackettLuce, plackett_luce_loss
from dpo_lightning.losses.sft import SFT
from dpo_lightning.training.metrics import preference_metrics, ranking_metrics

BETA = 0.1
TOL = {"rtol": 1e-5, "atol": 1e-5}  # the loss computes in fp32 from float64 inputs


def _lse(*values: float) -> float:
    """log Σ e^v, written out (inputs here stay far from overflow)."""
    return math.log(sum(math.exp(v) for v in values))


def _loss(policy, reference, ranks, beta=BETA, top_m=None, ties="efron") -> torch.Tensor:
    """[G] losses from nested lists (float64 in, as the module hands fp32 or wider)."""
    policy, reference = torch.tensor(policy, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    losses, _ = plackett_luce_loss(policy, reference, torch.tensor(ranks), beta, top_m, ties)
    return losses


def _random(groups: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[G, K] float64 policy and reference summed log-probs (≤ 0, tens of nats)."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(-torch.rand(groups, size, generator=generator, dtype=torch.float64) * 40 for _ in range(2))


def _random_ranks(groups: int, size: int, seed: int) -> torch.Tensor:
    """[G, K] ranks of random distinct scores (no ties)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(groups, size, generator=generator).argsort(-1).argsort(-1)


# --- hand computations ----------------------------------------------------------------------------------------


def test_three_responses_by_hand():
    # rewards r = β·(π − ref) = 0.5·[1, −2, 3] = [0.5, −1, 1.5]; ranks [1, 2, 0]: order slot 2 > slot 0 > slot 1
    policy, reference = [[-1.0, -4.0, -2.0]], [[-2.0, -2.0, -5.0]]
    a, b, c = 1.5, 0.5, -1.0  # best, second, worst
    expected = -((a - _lse(a, b, c)) + (b - _lse(b, c)) + (c - _lse(c)))
    torch.testing.assert_close(
        _loss(policy, reference, [[1, 2, 0]], beta=0.5).double(), torch.tensor([expected], dtype=torch.float64), **TOL
    )


def test_four_responses_by_hand():
    # β = 1, reference 0: r = π; ranks [3, 0, 2, 1]: order slot 1 > slot 3 > slot 2 > slot 0
    policy = [[-3.0, -1.0, -2.5, -0.5]]
    a, b, c, d = -1.0, -0.5, -2.5, -3.0
    first = a - math.log(math.exp(a) + math.exp(b) + math.exp(c) + math.exp(d))
    second = b - math.log(math.exp(b) + math.exp(c) + math.exp(d))
    third = c - math.log(math.exp(c) + math.exp(d))
    expected = -(first + second + third + 0.0)
    torch.testing.assert_close(
        _loss(policy, [[0.0] * 4], [[3, 0, 2, 1]], beta=1.0).double(),
        torch.tensor([expected], dtype=torch.float64),
        **TOL,
    )


def test_breslow_ties_by_hand():
    # ranks [0, 1, 1, 3] (scores 9, 7, 7, 2): the tied pair both draw from {1, 2, 3}; the worst from {3}
    r = [0.3, -0.2, 0.4, -1.0]
    expected = -(
        (r[0] - _lse(*r))  # best from all four
        + (r[1] - _lse(r[1], r[2], r[3]))  # tied: from the responses not ranked above, its peer included
        + (r[2] - _lse(r[1], r[2], r[3]))
        + 0.0  # the worst, alone
    )
    losses = _loss([r], [[0.0] * 4], [[0, 1, 1, 3]], beta=1.0, ties="breslow")
    torch.testing.assert_close(losses.double(), torch.tensor([expected], dtype=torch.float64), **TOL)


def test_efron_ties_by_hand():
    # ranks [0, 1, 1, 3]: the tied pair's second draw takes half the pair's weight off the risk set {1, 2, 3}
    r = [0.3, -0.2, 0.4, -1.0]
    e = [math.exp(v) for v in r]
    expected = -(
        (r[0] - _lse(*r))  # best from all four
        + (r[1] + r[2] - math.log(e[1] + e[2] + e[3]) - math.log(e[1] + e[2] + e[3] - (e[1] + e[2]) / 2))
        + 0.0  # the worst, alone
    )
    losses = _loss([r], [[0.0] * 4], [[0, 1, 1, 3]], beta=1.0, ties="efron")
    torch.testing.assert_close(losses.double(), torch.tensor([expected], dtype=torch.float64), **TOL)


@pytest.mark.parametrize("ties", TIES)
def test_all_tied_but_one(ties):
    r = [0.3, -0.2, 0.4, -1.0]
    e = [math.exp(v) for v in r]
    # one best, three tied below it: the best from all four; the bottom group, in any order, has probability 1
    below = -(r[0] - _lse(*r))
    # three tied best, one worst: the l-th tied draw from all four less l/3 of the group (Breslow: nothing off)
    per_peer = 1 / 3 if ties == "efron" else 0.0
    above = -(
        r[0] + r[1] + r[2] - sum(math.log(sum(e) - peers * per_peer * (e[0] + e[1] + e[2])) for peers in range(3))
    )
    losses = _loss([r, r], [[0.0] * 4] * 2, [[0, 1, 1, 1], [0, 0, 0, 3]], beta=1.0, ties=ties)
    torch.testing.assert_close(losses.double(), torch.tensor([below, above], dtype=torch.float64), **TOL)


# --- DPO at K = 2 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize("seed", range(3))
def test_two_responses_are_dpo(seed, ties):
    policy, reference = _random(64, 2, seed)  # slot 0 chosen
    ranks = torch.tensor([[0, 1]]).expand(64, 2)
    losses, rewards = plackett_luce_loss(policy, reference, ranks, BETA, ties=ties)
    expected, chosen_rewards, rejected_rewards = dpo_loss(
        policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], BETA
    )
    torch.testing.assert_close(losses, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(rewards, torch.stack([chosen_rewards, rejected_rewards], -1), rtol=0, atol=1e-6)


def test_a_pair_batch_logs_the_dpo_rewards():
    policy, reference = _random(16, 2, 7)
    ranks = _random_ranks(16, 2, 8)  # chosen in slot 0 or 1
    chosen, rejected = (ranks.argsort(-1)[:, place] for place in (0, 1))  # [P] slots
    rows = torch.arange(16)

    def pairs(logps: torch.Tensor) -> PairLogps:
        return PairLogps(logps[rows, chosen], logps[rows, rejected], torch.ones(16), torch.ones(16))

    tokens = torch.ones(16, 2)
    output = PlackettLuce(BETA)(RankingLogps(policy, tokens, ranks), RankingLogps(reference, tokens, ranks))
    dpo = DPO(BETA)(pairs(policy), pairs(reference))
    torch.testing.assert_close(output.losses, dpo.losses, rtol=0, atol=1e-6)
    torch.testing.assert_close(output.chosen_rewards[output.reward_mask], dpo.chosen_rewards, rtol=0, atol=0)
    torch.testing.assert_close(output.rejected_rewards[output.reward_mask], dpo.rejected_rewards, rtol=0, atol=0)


def test_reference_none_is_a_zero_reference():
    policy, _ = _random(4, 3, 9)
    ranks, tokens = _random_ranks(4, 3, 10), torch.ones(4, 3)
    free = PlackettLuce(BETA)(RankingLogps(policy, tokens, ranks), None)
    zero = PlackettLuce(BETA)(RankingLogps(policy, tokens, ranks), RankingLogps(torch.zeros(4, 3), tokens, ranks))
    torch.testing.assert_close(free.losses, zero.losses, rtol=0, atol=0)
    torch.testing.assert_close(free.chosen_rewards, zero.chosen_rewards, rtol=0, atol=0)


# --- padding, permutations ------------------------------------------------------------------------------------


def _ragged(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Policy, reference and ranks of four rankings of 2, 5, 3 and 4 responses (one with ties)."""
    generator = torch.Generator().manual_seed(seed)
    sizes, policy, reference, ranks = (2, 5, 3, 4), [], [], []
    for size in sizes:
        policy.append(-torch.rand(size, generator=generator, dtype=torch.float64) * 40)
        reference.append(-torch.rand(size, generator=generator, dtype=torch.float64) * 40)
        ranks.append(torch.randperm(size, generator=generator))
    ranks[1] = torch.tensor([0, 1, 1, 3, 4])
    return policy, reference, ranks


def _batched(policy, reference, ranks, padding: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[G, K] policy and reference log-probs of the rankings, `padding` in padding slots, and their [G, K] ranks."""
    groups = torch.cat([torch.full((len(r),), g) for g, r in enumerate(ranks)])
    ranks, tokens = torch.cat(ranks), torch.ones_like(groups)
    policy, reference = (RankingLogps.from_sequences(torch.cat(v), tokens, ranks, groups) for v in (policy, reference))
    return (
        torch.where(policy.valid, policy.logps, padding),
        torch.where(policy.valid, reference.logps, padding),
        policy.ranks,
    )


@pytest.mark.parametrize("top_m", [None, 1, 2])
def test_padded_batch_equals_each_ranking_alone(top_m):
    policy, reference, ranks = _ragged(11)
    batched_policy, batched_reference, batched_ranks = _batched(policy, reference, ranks, padding=-123.0)
    assert (batched_ranks == -1).sum() == 3 + 0 + 2 + 1
    losses, rewards = plackett_luce_loss(batched_policy, batched_reference, batched_ranks, BETA, top_m)
    for g in range(len(ranks)):
        alone, alone_rewards = plackett_luce_loss(policy[g][None], reference[g][None], ranks[g][None], BETA, top_m)
        torch.testing.assert_close(losses[g : g + 1], alone, **TOL)
        torch.testing.assert_close(rewards[g, : len(ranks[g])], alone_rewards[0], rtol=0, atol=0)
    assert (rewards[batched_ranks < 0] == 0).all()


@pytest.mark.parametrize("padding", [0.0, -1e4, float("nan")])
def test_padding_gives_no_nan_and_no_gradient(padding):
    policy, reference, ranks = _ragged(12)
    batched_policy, batched_reference, batched_ranks = _batched(policy, reference, ranks, padding)
    batched_policy.requires_grad_(True)
    losses, _ = plackett_luce_loss(batched_policy, batched_reference, batched_ranks, BETA)
    losses.mean().backward()
    assert torch.isfinite(losses).all()
    assert torch.isfinite(batched_policy.grad).all()
    assert (batched_policy.grad[batched_ranks < 0] == 0).all()
    assert (batched_policy.grad[batched_ranks >= 0] != 0).all()


def test_a_ranking_of_padding_only_is_zero_and_finite():
    policy = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    losses, _ = plackett_luce_loss(policy, torch.zeros(1, 3), torch.full((1, 3), -1), BETA)
    losses.sum().backward()
    assert losses.item() == 0.0 and (policy.grad == 0).all()


@pytest.mark.parametrize("seed", range(3))
def test_shuffling_slots_with_their_ranks_leaves_the_loss_unchanged(seed):
    policy, reference = _random(8, 5, seed)
    ranks = _random_ranks(8, 5, seed + 100)
    ranks[:4] = torch.tensor([0, 1, 1, 3, 3])  # ties in half the rankings
    generator = torch.Generator().manual_seed(seed + 200)
    shuffle = torch.rand(8, 5, generator=generator).argsort(-1)  # [G, K] a permutation of each ranking's slots
    losses, _ = plackett_luce_loss(policy, reference, ranks, BETA)
    shuffled, _ = plackett_luce_loss(*(t.gather(1, shuffle) for t in (policy, reference, ranks)), BETA)
    torch.testing.assert_close(shuffled, losses)


# --- top_m ----------------------------------------------------------------------------------------------------


def test_top_one_is_the_best_of_k_softmax_loss():
    policy, reference = _random(8, 4, 13)
    ranks = _random_ranks(8, 4, 14)
    losses, _ = plackett_luce_loss(policy, reference, ranks, BETA, top_m=1)
    best_of_k = -torch.log_softmax(BETA * (policy - reference), -1)[ranks == 0]  # [G] float64 −log softmax(r)_best
    torch.testing.assert_close(losses.double(), best_of_k, **TOL)


@pytest.mark.parametrize("top_m", [4, 5, 100])
def test_top_m_at_least_k_is_the_full_loss(top_m):
    policy, reference = _random(8, 4, 15)
    ranks = _random_ranks(8, 4, 16)
    full, _ = plackett_luce_loss(policy, reference, ranks, BETA)
    truncated, _ = plackett_luce_loss(policy, reference, ranks, BETA, top_m=top_m)
    torch.testing.assert_close(truncated, full, rtol=0, atol=0)


def test_the_last_places_term_is_exactly_zero():
    policy, reference = _random(8, 4, 19)
    ranks = _random_ranks(8, 4, 20)
    full, _ = plackett_luce_loss(policy, reference, ranks, BETA)
    without_last, _ = plackett_luce_loss(policy, reference, ranks, BETA, top_m=3)
    torch.testing.assert_close(without_last, full, rtol=0, atol=0)


@pytest.mark.parametrize("ties", TIES)
def test_top_m_keeps_a_tied_group_that_starts_inside_it_whole(ties):
    r = [0.3, -0.2, 0.4, -1.0]
    s_r, s_g = math.exp(r[1]) + math.exp(r[2]) + math.exp(r[3]), math.exp(r[1]) + math.exp(r[2])
    second_draw = s_r - s_g / 2 if ties == "efron" else s_r  # the tied pair's second member's denominator
    expected = -((r[0] - _lse(*r)) + (r[1] - math.log(s_r)) + (r[2] - math.log(second_draw)))
    losses = _loss([r], [[0.0] * 4], [[0, 1, 1, 3]], beta=1.0, top_m=2, ties=ties)
    torch.testing.assert_close(losses.double(), torch.tensor([expected], dtype=torch.float64), **TOL)


# --- ties against the exact likelihood -----------------------------------------------------------------------


def _exact_nll(rewards: list[float], ranks: list[int]) -> float:
    """−log of the exact likelihood of a ranking with ties, float64, by enumeration: the plain Plackett–Luce
    probability of each order of the valid slots (rank ≥ 0) that the ranks allow (a tied group in any order),
    summed."""
    slots = [k for k, rank in enumerate(ranks) if rank >= 0]
    total = 0.0
    for order in itertools.permutations(slots):
        if all(ranks[a] <= ranks[b] for a, b in itertools.pairwise(order)):
            probability = 1.0
            for place, k in enumerate(order):
                probability *= math.exp(rewards[k]) / sum(math.exp(rewards[j]) for j in order[place:])
            total += probability
    return -math.log(total)


def _rule_nll(rewards: list[float], ranks: list[int], ties: str) -> float:
    """The loss by its definition, float64, one tied group G at a time above the bottom one: with R the responses
    not ranked above G and d = |G|, −[Σ_{k∈G} r_k − Σ_{l<d} log(S_R − f_l·S_G)], f_l = l/d (Efron) or 0 (Breslow)."""
    valid = [k for k, rank in enumerate(ranks) if rank >= 0]
    levels = sorted({ranks[k] for k in valid})
    total = 0.0
    for level in levels[:-1]:  # the bottom group's factor is 1
        group = [k for k in valid if ranks[k] == level]
        s_r = sum(math.exp(rewards[j]) for j in valid if ranks[j] >= level)
        s_g = sum(math.exp(rewards[k]) for k in group)
        fractions = [peers / len(group) if ties == "efron" else 0.0 for peers in range(len(group))]
        total -= sum(rewards[k] for k in group) - sum(math.log(s_r - f * s_g) for f in fractions)
    return total


def _log_orders(ranks: list[int]) -> float:
    """Σ log d! over the tied groups above the bottom one: the orders Efron and Breslow leave out."""
    levels = sorted({rank for rank in ranks if rank >= 0})
    return sum(math.lgamma(ranks.count(level) + 1) for level in levels[:-1])


def _tie_cases(middle_ties: bool, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[count, 5] float64 rewards and ranks of rankings of 2..5 responses with random ties, padded (rank −1) in
    random slots: every ranking has a tied group above its bottom group (`middle_ties`) or none (ties, if any, at
    the bottom only)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < count:
        size = int(torch.randint(2, 6, (), generator=generator))
        scores = torch.randint(0, size, (size,), generator=generator).tolist()
        ranks = [sum(other > score for other in scores) for score in scores]  # competition ranks
        levels = sorted(set(ranks))
        if len(levels) < 2 or any(ranks.count(level) > 1 for level in levels[:-1]) != middle_ties:
            continue
        slots = torch.randperm(5, generator=generator)[:size].tolist()  # where the responses sit; the rest pad
        row = [-1] * 5
        for slot, rank in zip(slots, ranks, strict=True):
            row[slot] = rank
        rows.append(row)
    rewards = torch.randn(count, 5, generator=generator, dtype=torch.float64) * 2
    return rewards, torch.tensor(rows)


@pytest.mark.parametrize("ties", TIES)
def test_ties_at_the_bottom_only_give_the_exact_likelihood(ties):
    rewards, ranks = _tie_cases(middle_ties=False, count=200, seed=21)
    assert sum(row.count(max(row)) > 1 for row in ranks.tolist()) > 50  # rankings whose bottom group is tied
    losses, _ = plackett_luce_loss(rewards, torch.zeros_like(rewards), ranks, 1.0, ties=ties)
    exact = [_exact_nll(r, k) for r, k in zip(rewards.tolist(), ranks.tolist(), strict=True)]
    torch.testing.assert_close(losses.double(), torch.tensor(exact, dtype=torch.float64), **TOL)


def test_efron_is_closer_to_the_exact_likelihood_than_breslow():
    rewards, ranks = _tie_cases(middle_ties=True, count=200, seed=22)
    efron, _ = plackett_luce_loss(rewards, torch.zeros_like(rewards), ranks, 1.0, ties="efron")
    breslow, _ = plackett_luce_loss(rewards, torch.zeros_like(rewards), ranks, 1.0, ties="breslow")
    for g, (r, k) in enumerate(zip(rewards.tolist(), ranks.tolist(), strict=True)):
        exact, orders = _exact_nll(r, k), _log_orders(k)
        efron_nll, breslow_nll = _rule_nll(r, k, "efron"), _rule_nll(r, k, "breslow")
        assert efron[g].item() == pytest.approx(efron_nll, rel=1e-5, abs=1e-5)
        assert breslow[g].item() == pytest.approx(breslow_nll, rel=1e-5, abs=1e-5)
        # exact / d! ≥ Efron (Jensen: 1/∏ denominators is convex) > Breslow, per tied group, in −log
        assert exact <= efron_nll - orders + 1e-12 and efron_nll - orders < breslow_nll - orders - 1e-4
        assert abs(efron[g].item() - exact) < abs(breslow[g].item() - exact)


@pytest.mark.parametrize("ties", TIES)
def test_a_tied_bottom_pair_adds_no_gradient_of_its_own(ties):
    # rewards (5, 1, −1), the last two tied at the bottom: the exact likelihood is P(slot 0 first) = softmax(r)_0,
    # gradient softmax(r) − e_0 (+0.018, +0.002 on the pair); Breslow on every group gave +0.78, −0.76
    rewards = torch.tensor([[5.0, 1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    losses, _ = plackett_luce_loss(rewards, torch.zeros(1, 3), torch.tensor([[0, 1, 1]]), 1.0, ties=ties)
    losses.sum().backward()
    softmax = [math.exp(v) / sum(math.exp(u) for u in (5.0, 1.0, -1.0)) for v in (5.0, 1.0, -1.0)]
    expected = torch.tensor([[softmax[0] - 1, softmax[1], softmax[2]]], dtype=torch.float64)
    torch.testing.assert_close(rewards.grad, expected, **TOL)
    assert losses.item() == pytest.approx(-math.log(softmax[0]), rel=1e-5)
    certain, _ = plackett_luce_loss(torch.tensor([[30.0, 0.0, 0.0]]), torch.zeros(1, 3), torch.tensor([[0, 1, 1]]), 1.0)
    assert certain.item() < 1e-6  # no floor at d·log d


@pytest.mark.parametrize("ties", TIES)
@pytest.mark.parametrize(
    "ranks",
    [[0, 1, 1, 1, 1, 1, 1, 7], [0, 0, 0, 0, 0, 0, 0, 7], [0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 4, 4, 4, 4]],
)
def test_large_tied_groups_and_extreme_rewards_give_no_nan(ranks, ties):
    # tied rewards far above the rest (S_T ≈ S_R: log1p(−l/d)), far below (S_T ≪ S_R), and spread over 300 nats
    rewards = torch.tensor(
        [[0.0, 50.0, 50.0, 50.0, 50.0, 50.0, 50.0, -50.0], [0.0, -60.0, 40.0, -80.0, 1.0, 2.0, 3.0, 300.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    losses, _ = plackett_luce_loss(rewards, torch.zeros(2, 8), torch.tensor([ranks, ranks]), 1.0, ties=ties)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(rewards.grad).all()
    expected = [_rule_nll(r, ranks, ties) for r in rewards.tolist()]
    torch.testing.assert_close(losses.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-4)


# --- gradient directions --------------------------------------------------------------------------------------


def test_one_sgd_step_raises_the_labelled_orders_likelihood():
    policy, reference = _random(16, 4, 17)
    policy.requires_grad_(True)
    ranks = _random_ranks(16, 4, 18)
    losses, _ = plackett_luce_loss(policy, reference, ranks, BETA)
    losses.sum().backward()
    assert (policy.grad[ranks == 0] < 0).all()  # the best response's log-prob goes up
    assert (policy.grad[ranks == 3] > 0).all()  # the worst one's goes down
    with torch.no_grad():
        stepped, _ = plackett_luce_loss(policy - 1.0 * policy.grad, reference, ranks, BETA)
    assert (stepped < losses.detach()).all()  # −log P(labelled order) drops in every ranking


# --- Objective, hyperparameters, conf -------------------------------------------------------------------------


def test_objective_logs_every_label_ordered_pair():
    # ranking 0: ranks [1, 0, 2] → pairs (1,0) (1,2) (0,2); ranking 1: [0, 1, 1, pad] → (0,1) (0,2); tied never pair
    policy = torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-4.0, -5.0, -6.0, 0.0]])
    ranks = torch.tensor([[1, 0, 2, -1], [0, 1, 1, -1]])
    output = PlackettLuce(beta=2.0)(RankingLogps(policy, torch.ones(2, 4), ranks), None)
    assert output.losses.shape == (2,) and output.chosen_rewards.shape == output.reward_mask.shape == (2 * 4 * 4,)
    logged = output.chosen_rewards[output.reward_mask], output.rejected_rewards[output.reward_mask]
    pairs = sorted(zip(*(rewards.tolist() for rewards in logged), strict=True))
    assert pairs == sorted([(-4.0, -2.0), (-4.0, -6.0), (-2.0, -6.0), (-8.0, -10.0), (-8.0, -12.0)])
    assert not output.chosen_rewards.requires_grad


def _old_reward_metrics(ranks: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
    """The `rewards/*` of the label-ordered pairs as logged before the mask: the pairs picked with `nonzero`."""
    pairs = (ranks[:, :, None] >= 0) & (ranks[:, :, None] < ranks[:, None, :])  # [G, K, K]
    groups, better, worse = pairs.nonzero(as_tuple=True)
    chosen, rejected = rewards[groups, better], rewards[groups, worse]
    return {
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
    }


@pytest.mark.parametrize("seed", range(3))
def test_logged_reward_metrics_are_those_of_the_label_ordered_pairs(seed):
    policy, reference, ranks = _batched(*_ragged(seed + 30), padding=-7.0)  # padding and ties
    policy, reference = policy.float(), reference.float()
    tokens = torch.ones_like(ranks)
    output = PlackettLuce(BETA)(RankingLogps(policy, tokens, ranks), RankingLogps(reference, tokens, ranks))
    pair_logps = PairLogps(policy[:, 0], policy[:, 1], tokens[:, 0], tokens[:, 1])  # for logps/* only
    metrics = {name: mean.value.item() for name, mean in preference_metrics(output, pair_logps).items()}
    _, rewards = plackett_luce_loss(policy, reference, ranks, BETA)
    old = _old_reward_metrics(ranks, rewards)
    assert {name: metrics[name] for name in old} == pytest.approx(old, rel=1e-6, abs=1e-7)
    # and against a loop over the pairs, in float64
    pairs = [
        (float(rewards[g, i]), float(rewards[g, j]))
        for g, row in enumerate(ranks.tolist())
        for i, j in itertools.permutations(range(len(row)), 2)
        if 0 <= row[i] < row[j]
    ]
    assert output.num_reward_pairs().item() == len(pairs) and output.num_reward_pairs().dim() == 0
    assert metrics["rewards/margins"] == pytest.approx(sum(c - r for c, r in pairs) / len(pairs), rel=1e-5, abs=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx(sum(c > r for c, r in pairs) / len(pairs), abs=1e-7)


def test_masked_out_reward_pairs_never_reach_the_metrics():
    # pairs 1 and 3 are masked out and hold NaN and inf: a masked mean by multiplication would give NaN
    output = LossOutput(
        torch.zeros(2),
        torch.tensor([1.0, float("nan"), -2.0, float("inf")]),
        torch.tensor([0.5, 0.0, 1.0, 0.0]),
        reward_mask=torch.tensor([True, False, True, False]),
    )
    policy = PairLogps(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2))
    metrics = {name: mean.value.item() for name, mean in preference_metrics(output, policy).items()}
    assert metrics["rewards/chosen"] == pytest.approx((1.0 - 2.0) / 2)
    assert metrics["rewards/rejected"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["rewards/accuracies"] == pytest.approx(1 / 2)
    assert metrics["rewards/margins"] == pytest.approx((0.5 - 3.0) / 2)
    assert output.num_reward_pairs().item() == 2


def test_number_of_reward_pairs_without_a_mask_and_without_rewards():
    pairs = PairLogps(-torch.rand(5), -torch.rand(5), torch.ones(5), torch.ones(5))
    counts = [DPO(BETA)(pairs, pairs).num_reward_pairs(), SFT()(pairs, None).num_reward_pairs()]
    assert [count.item() for count in counts] == [5, 0]
    assert all(count.dim() == 0 and count.dtype == torch.long for count in counts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs happen on a GPU")
def test_the_objective_and_its_reward_metrics_never_sync_with_the_host():
    policy, reference, ranks = (t.cuda() for t in _batched(*_ragged(40), padding=0.0))
    tokens = torch.ones_like(ranks)
    objective, pairs = PlackettLuce(BETA), PairLogps(policy[:, 0], policy[:, 1], tokens[:, 0], tokens[:, 1])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a synchronising call raises
    try:
        output = objective(RankingLogps(policy, tokens, ranks), RankingLogps(reference, tokens, ranks))
        metrics = preference_metrics(output, pairs)
        count = output.num_reward_pairs()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    old = _old_reward_metrics(ranks, plackett_luce_loss(policy, reference, ranks, BETA)[1])
    assert {name: metrics[name].value.item() for name in old} == pytest.approx(old, rel=1e-6, abs=1e-7)
    assert count.item() == 1 + (10 - 1) + 3 + 6  # the label-ordered pairs of rankings of 2, 5 (one tie), 3, 4


def test_fp32_losses_from_bf16():
    policy = torch.tensor([[-10.0, -20.0, -30.0]], dtype=torch.bfloat16, requires_grad=True)
    losses, rewards = plackett_luce_loss(
        policy, torch.zeros(1, 3, dtype=torch.bfloat16), torch.tensor([[0, 1, 2]]), 1.0
    )
    assert losses.dtype == torch.float32 and rewards.dtype == torch.float32 and losses.requires_grad


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PlackettLuce(beta=0.0), "beta: must be > 0, got 0.0"),
        (lambda: PlackettLuce(beta=-1.0), "beta: must be > 0, got -1.0"),
        (lambda: PlackettLuce(0.1, top_m=0), "loss.top_m: must be null or an integer ≥ 1, got 0"),
        (lambda: PlackettLuce(0.1, top_m=-2), "loss.top_m: must be null or an integer ≥ 1, got -2"),
        (lambda: PlackettLuce(0.1, top_m=1.5), "loss.top_m: must be null or an integer ≥ 1, got 1.5"),
        (lambda: PlackettLuce(0.1, ties="exact"), "loss.ties: must be one of efron, breslow, got 'exact'"),
        (lambda: PlackettLuce(0.1, ties=None), "loss.ties: must be one of efron, breslow, got None"),
    ],
)
def test_bad_hyperparameters_fail_in_one_line(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert str(error.value) == message


def test_conf_option_composes_and_instantiates():
    default = compose("loss=plackett_luce")
    cfg = compose("loss=plackett_luce", "beta=0.25", "loss.top_m=2", "loss.ties=breslow")
    assert instantiate(default.loss).ties == "efron"
    objective = instantiate(cfg.loss)
    assert type(objective) is PlackettLuce and objective.name == "plackett_luce"
    assert objective.beta == 0.25 and objective.top_m == 2 and objective.ties == "breslow"
    assert objective.takes_rankings and objective.needs_reference and objective.reference_free_ok


# --- ranking metrics ------------------------------------------------------------------------------------------


def _metric_batch(
    seed: int,
) -> tuple[list[list[float]], list[list[float]], list[list[int]], RankingLogps, RankingLogps]:
    """Rankings of 2..6 responses with integer scores and labels (ties in both), as lists and as RankingLogps."""
    generator = torch.Generator().manual_seed(seed)
    policy, reference, labels = [], [], []
    for g in range(40):
        size = 2 + g % 5
        label_scores = torch.randint(0, 3, (size,), generator=generator).tolist()
        if len(set(label_scores)) < 2:  # a ranking needs two label levels (data/rankings.py)
            label_scores[0] = 3
        labels.append(ranks_from_scores(label_scores))
        policy.append(torch.randint(-4, 0, (size,), generator=generator).double().tolist())
        reference.append(torch.randint(-2, 0, (size,), generator=generator).double().tolist())
    policy[0], reference[0] = [-1.0] * len(labels[0]), [0.0] * len(labels[0])  # all scores tie: τ undefined
    groups = torch.cat([torch.full((len(r),), g) for g, r in enumerate(labels)])
    ranks, tokens = torch.tensor([rank for row in labels for rank in row]), torch.ones(len(groups))
    as_batch = [
        RankingLogps.from_sequences(torch.tensor([x for row in v for x in row]), tokens, ranks, groups)
        for v in (policy, reference)
    ]
    return policy, reference, labels, *as_batch


@pytest.mark.parametrize("seed", range(3))
def test_kendall_tau_is_scipys_tau_b(seed):
    policy, reference, labels, policy_batch, reference_batch = _metric_batch(seed)
    for with_reference in (True, False):
        taus = []
        for p, r, ranks in zip(policy, reference, labels, strict=True):
            scores = [a - b for a, b in zip(p, r, strict=True)] if with_reference else p
            taus.append(scipy.stats.kendalltau(scores, [-rank for rank in ranks]).statistic)  # τ-b by default
        defined = [tau for tau in taus if not math.isnan(tau)]
        assert len(defined) < len(taus)
        metrics = ranking_metrics(policy_batch, reference_batch if with_reference else None)
        assert metrics["ranking/kendall_tau"].value.item() == pytest.approx(sum(defined) / len(defined), abs=1e-6)
        assert int(metrics["ranking/kendall_tau"].count) == len(defined)  # a mean over the rankings it is defined in


@pytest.mark.parametrize("seed", range(3))
def test_top1_against_a_loop(seed):
    policy, reference, labels, policy_batch, reference_batch = _metric_batch(seed)
    hits = []
    for p, r, ranks in zip(policy, reference, labels, strict=True):
        scores = [a - b for a, b in zip(p, r, strict=True)]
        top = [k for k, score in enumerate(scores) if score == max(scores)]
        hits.append(sum(ranks[k] == 0 for k in top) / len(top))  # the hit rate when ties are broken at random
    metrics = ranking_metrics(policy_batch, reference_batch)
    assert metrics["ranking/top1"].value.item() == pytest.approx(sum(hits) / len(hits), abs=1e-6)


def test_ranking_metrics_of_distinct_scores():
    ranks = torch.tensor([[0, 1, 2, -1], [2, 0, 1, 3]])
    policy = RankingLogps(torch.tensor([[-1.0, -2.0, -3.0, 0.0], [-1.0, -2.0, -3.0, -4.0]]), torch.ones(2, 4), ranks)
    metrics = ranking_metrics(policy, None)
    # ranking 0: scores agree with the labels on all 3 pairs (τ = 1); ranking 1: score order 0 > 1 > 2 > 3 against
    # label order 1 > 2 > 0 > 3: pairs (0,1) (0,2) discordant, the other 4 concordant: τ = (4 − 2)/6
    assert metrics["ranking/kendall_tau"].value.item() == pytest.approx((1 + 2 / 6) / 2)
    assert metrics["ranking/top1"].value.item() == pytest.approx(0.5)
    assert all(not mean.value.requires_grad for mean in metrics.values())


def test_ranking_metrics_with_policy_equal_to_reference_are_finite():
    logps = torch.tensor([[-3.0, -1.0, -2.0]], requires_grad=True)
    policy = RankingLogps(logps, torch.ones(1, 3), torch.tensor([[1, 0, 2]]))
    metrics = ranking_metrics(policy, RankingLogps(logps.detach(), torch.ones(1, 3), policy.ranks))
    assert metrics["ranking/kendall_tau"] == (0.0, 0)  # undefined in every ranking: a mean over none
    assert metrics["ranking/top1"].value.item() == pytest.approx(1 / 3)  # all three tie at the top, one has rank 0
