"""loss=simpo, orpo, unlikelihood: the papers' formulas computed by hand, limiting cases, gradient directions,
hyperparameter checks and dtypes."""

import math
import random

import pytest
import torch

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses import PairLogps, TokenLogps
from dpo_lightning.losses.dpo import dpo_loss
from dpo_lightning.losses.orpo import ORPO
from dpo_lightning.losses.sft import sft_loss
from dpo_lightning.losses.simpo import SimPO
from dpo_lightning.losses.unlikelihood import Unlikelihood

PAIRS = 8


def _pairs(seed: int, dtype=torch.float64) -> PairLogps:
    """Random summed log-probs of P pairs (≤ 0) with response lengths 1..20."""
    generator = torch.Generator().manual_seed(seed)
    chosen_tokens, rejected_tokens = (torch.randint(1, 21, (PAIRS,), generator=generator) for _ in range(2))
    chosen = -torch.rand(PAIRS, generator=generator, dtype=torch.float64) * 3 * chosen_tokens
    rejected = -torch.rand(PAIRS, generator=generator, dtype=torch.float64) * 3 * rejected_tokens
    return PairLogps(chosen.to(dtype), rejected.to(dtype), chosen_tokens, rejected_tokens)


def _token_pairs(seed: int, dtype=torch.float64) -> tuple[PairLogps, list[list[float]]]:
    """P pairs built from random per-token log-probs, in shuffled token order; also each sequence's tokens."""
    rng = random.Random(seed)
    sequences = [[math.log(rng.uniform(0.01, 0.99)) for _ in range(rng.randint(1, 9))] for _ in range(2 * PAIRS)]
    sequences[PAIRS][0] = math.log1p(-1e-7)  # a rejected token with p ≈ 1: 1 − p is clamped at 1e-5
    entries = [(logp, seq) for seq, tokens in enumerate(sequences) for logp in tokens]
    rng.shuffle(entries)
    logps = torch.tensor([logp for logp, _ in entries], dtype=dtype)
    seqs = torch.tensor([seq for _, seq in entries])
    sums = torch.zeros(2 * PAIRS, dtype=dtype).index_add(0, seqs, logps)
    lengths = torch.tensor([len(tokens) for tokens in sequences])
    policy = PairLogps(sums[:PAIRS], sums[PAIRS:], lengths[:PAIRS], lengths[PAIRS:], TokenLogps(logps, seqs))
    return policy, sequences


def _values(tensor: torch.Tensor) -> list[float]:
    return [float(v) for v in tensor]


# --- SimPO ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "gamma", "label_smoothing"), [(2.0, 1.0, 0.0), (2.5, 1.4, 0.0), (0.5, 0.3, 0.2)])
def test_simpo_matches_the_paper_formula(beta, gamma, label_smoothing):
    policy = _pairs(0)
    output = SimPO(beta=beta, gamma=gamma, label_smoothing=label_smoothing)(policy, None)
    for k in range(PAIRS):
        reward_c = beta * float(policy.chosen[k]) / int(policy.chosen_tokens[k])
        reward_r = beta * float(policy.rejected[k]) / int(policy.rejected_tokens[k])
        z = reward_c - reward_r - gamma
        p_chosen_wins = 1 / (1 + math.exp(-z))  # Bradley–Terry with margin γ (paper eq. 6)
        expected = -(1 - label_smoothing) * math.log(p_chosen_wins) - label_smoothing * math.log(1 - p_chosen_wins)
        assert float(output.losses[k]) == pytest.approx(expected, rel=1e-6)
        assert float(output.chosen_rewards[k]) == pytest.approx(reward_c, rel=1e-6)
        assert float(output.rejected_rewards[k]) == pytest.approx(reward_r, rel=1e-6)


def test_simpo_without_margin_on_equal_lengths_is_reference_free_dpo_on_mean_logps():
    policy = _pairs(1)
    policy = PairLogps(policy.chosen, policy.rejected, policy.chosen_tokens, policy.chosen_tokens)
    output = SimPO(beta=2.0, gamma=0.0)(policy, None)
    lengths = policy.chosen_tokens.double()
    zeros = torch.zeros(PAIRS, dtype=torch.float64)
    expected, _, _ = dpo_loss(policy.chosen / lengths, policy.rejected / lengths, zeros, zeros, 2.0)
    torch.testing.assert_close(output.losses.double(), expected.double(), rtol=1e-6, atol=1e-7)


def test_simpo_is_a_function_of_length_normalised_logps():
    # doubling a response and its summed log-prob changes nothing
    policy = _pairs(2)
    doubled = PairLogps(2 * policy.chosen, policy.rejected, 2 * policy.chosen_tokens, policy.rejected_tokens)
    objective = SimPO(beta=2.0, gamma=1.0)
    torch.testing.assert_close(objective(doubled, None).losses, objective(policy, None).losses)


# --- ORPO ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [0.1, 0.25, 1.0])
def test_orpo_matches_the_paper_formula(weight):
    policy = _pairs(3)
    output = ORPO(odds_ratio_weight=weight)(policy, None)
    ratios, log_sigmoids = [], []
    for k in range(PAIRS):
        p_c = math.exp(float(policy.chosen[k]) / int(policy.chosen_tokens[k]))  # per-token mean likelihood
        p_r = math.exp(float(policy.rejected[k]) / int(policy.rejected_tokens[k]))
        odds_c, odds_r = p_c / (1 - p_c), p_r / (1 - p_r)
        l_sft = -math.log(p_c)
        l_or = math.log1p(odds_r / odds_c)  # −log σ(log(odds_c / odds_r)) = log(1 + odds_r / odds_c)
        assert float(output.losses[k]) == pytest.approx(l_sft + weight * l_or, rel=1e-6)
        assert float(output.chosen_rewards[k]) == pytest.approx(weight * math.log(p_c), rel=1e-6)
        assert float(output.rejected_rewards[k]) == pytest.approx(weight * math.log(p_r), rel=1e-6)
        ratios.append(math.log(odds_c / odds_r))
        log_sigmoids.append(-l_or)
    nll = -(policy.chosen / policy.chosen_tokens).mean()
    assert float(output.metrics["nll_loss"]) == pytest.approx(float(nll), rel=1e-6)
    assert float(output.metrics["log_odds_chosen"]) == pytest.approx(sum(ratios) / PAIRS, rel=1e-6)
    assert float(output.metrics["log_odds_ratio"]) == pytest.approx(sum(log_sigmoids) / PAIRS, rel=1e-6)


def test_orpo_without_odds_ratio_is_the_per_token_nll():
    policy = _pairs(4)
    output = ORPO(odds_ratio_weight=0.0)(policy, None)
    expected = sft_loss(policy.chosen, policy.chosen_tokens, length_normalized=True)
    torch.testing.assert_close(output.losses, expected.float())


def test_orpo_is_finite_and_accurate_for_near_certain_responses():
    # fp32 log p̄ = −1e-6: 1 − p̄ ≈ 1e-6 must not come from 1 − exp(−1e-6) (fp32 spacing near 1 is 6e-8); and
    # log p̄ = 0 (p̄ = 1 to fp32 precision, which a saturated softmax produces) must stay finite
    chosen = torch.tensor([-1e-6, 0.0], requires_grad=True)
    rejected = torch.tensor([-2.0, -1.0], requires_grad=True)
    ones = torch.ones(2, dtype=torch.long)
    output = ORPO(odds_ratio_weight=1.0)(PairLogps(chosen, rejected, ones, ones), None)
    output.losses.sum().backward()
    assert torch.isfinite(output.losses).all() and torch.isfinite(chosen.grad).all()
    log_p = float(torch.tensor(-1e-6))  # the fp32 input, exactly
    odds_c, odds_r = math.exp(log_p) / -math.expm1(log_p), math.exp(-2.0) / -math.expm1(-2.0)
    assert float(output.losses.detach()[0]) == pytest.approx(-log_p + math.log1p(odds_r / odds_c), rel=1e-5)


# --- Unlikelihood --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_unlikelihood_matches_per_token_sums(alpha):
    policy, sequences = _token_pairs(5)
    output = Unlikelihood(alpha=alpha)(policy, None)
    likelihoods, unlikelihoods = [], []
    for k in range(PAIRS):
        likelihood = -sum(sequences[k])
        unlikelihood = 0.0
        for logp in sequences[PAIRS + k]:
            unlikelihood -= math.log(max(1.0 - math.exp(logp), 1e-5))  # Welleck et al.'s clamp
        assert float(output.losses[k]) == pytest.approx(likelihood + alpha * unlikelihood, rel=1e-6)
        likelihoods.append(likelihood)
        unlikelihoods.append(unlikelihood)
    assert float(output.metrics["nll_loss"]) == pytest.approx(sum(likelihoods) / PAIRS, rel=1e-6)
    assert float(output.metrics["unlikelihood_loss"]) == pytest.approx(sum(unlikelihoods) / PAIRS, rel=1e-6)
    assert output.chosen_rewards is None and output.rejected_rewards is None


def test_unlikelihood_without_alpha_is_the_summed_sft_nll():
    policy, _ = _token_pairs(6)
    output = Unlikelihood(alpha=0.0)(policy, None)
    torch.testing.assert_close(output.losses, sft_loss(policy.chosen, policy.chosen_tokens).float())


def test_unlikelihood_needs_per_token_logps():
    policy = _pairs(7)
    with pytest.raises(ValueError, match=r"loss=unlikelihood needs per-token policy log-probs"):
        Unlikelihood()(policy, None)


def test_unlikelihood_gradient_lowers_rejected_tokens_and_raises_chosen_ones():
    policy, _ = _token_pairs(8)
    logps = policy.tokens.logps.clone().requires_grad_()
    seqs = policy.tokens.seqs
    sums = torch.zeros(2 * PAIRS, dtype=logps.dtype).index_add(0, seqs, logps)
    with_grad = PairLogps(
        sums[:PAIRS], sums[PAIRS:], policy.chosen_tokens, policy.rejected_tokens, TokenLogps(logps, seqs)
    )
    Unlikelihood(alpha=1.0)(with_grad, None).losses.mean().backward()
    chosen, rejected = seqs < PAIRS, seqs >= PAIRS
    clamped = logps.detach() > math.log1p(-1e-5)  # 1 − p at the floor: no gradient, as in Welleck et al.
    assert (logps.grad[chosen] < 0).all()  # descent raises every chosen token
    assert (logps.grad[rejected & ~clamped] > 0).all()  # and lowers every rejected one
    assert clamped.sum() == 1 and (logps.grad[clamped] == 0).all()


# --- All three -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("objective", [SimPO(beta=2.0, gamma=1.0), ORPO(odds_ratio_weight=0.1)], ids=["simpo", "orpo"])
def test_gradient_raises_chosen_and_lowers_rejected(objective):
    policy = _pairs(9)
    chosen, rejected = policy.chosen.clone().requires_grad_(), policy.rejected.clone().requires_grad_()
    output = objective(PairLogps(chosen, rejected, policy.chosen_tokens, policy.rejected_tokens), None)
    output.losses.mean().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SimPO(beta=0.0), r"^beta: must be > 0, got 0.0$"),
        (lambda: SimPO(beta=2.0, gamma=-0.5), r"^loss\.gamma: must be ≥ 0, got -0.5$"),
        (lambda: SimPO(beta=2.0, gamma=float("nan")), r"^loss\.gamma: must be ≥ 0, got nan$"),
        (lambda: SimPO(beta=2.0, label_smoothing=0.5), r"^loss\.label_smoothing: must be in \[0.0, 0.5\), got 0.5$"),
        (lambda: SimPO(beta=2.0, label_smoothing=-0.1), r"^loss\.label_smoothing: must be in"),
        (lambda: ORPO(odds_ratio_weight=-0.1), r"^loss\.odds_ratio_weight: must be ≥ 0, got -0.1$"),
        (lambda: Unlikelihood(alpha=1.5), r"^loss\.alpha: must be in \[0.0, 1.0\], got 1.5$"),
        (lambda: Unlikelihood(alpha=-0.1), r"^loss\.alpha: must be in \[0.0, 1.0\], got -0.1$"),
    ],
)
def test_bad_hyperparameters_fail_in_one_line(make, message):
    with pytest.raises(ConfigError, match=message) as error:
        make()
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("objective", [SimPO(beta=2.0), ORPO()], ids=["simpo", "orpo"])
def test_rewards_are_detached_fp32_from_bf16_inputs(objective):
    policy = _pairs(10, dtype=torch.bfloat16)
    chosen = policy.chosen.clone().requires_grad_()
    output = objective(PairLogps(chosen, policy.rejected, policy.chosen_tokens, policy.rejected_tokens), None)
    assert output.losses.dtype == torch.float32 and output.losses.requires_grad
    for tensor in (output.chosen_rewards, output.rejected_rewards, *output.metrics.values()):
        assert tensor.dtype == torch.float32 and not tensor.requires_grad


def test_unlikelihood_computes_in_fp32_from_bf16_inputs():
    policy, _ = _token_pairs(11, dtype=torch.bfloat16)
    logps = policy.tokens.logps.clone().requires_grad_()
    policy = PairLogps(
        policy.chosen,
        policy.rejected,
        policy.chosen_tokens,
        policy.rejected_tokens,
        TokenLogps(logps, policy.tokens.seqs),
    )
    output = Unlikelihood()(policy, None)
    assert output.losses.dtype == torch.float32 and output.losses.requires_grad
    assert all(t.dtype == torch.float32 and not t.requires_grad for t in output.metrics.values())


def test_none_of_them_needs_a_reference():
    assert not SimPO.needs_reference and not ORPO.needs_reference and not Unlikelihood.needs_reference
