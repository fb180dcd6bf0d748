"""The objectives against hand computations."""

import math

import pytest
import torch

from dpo_lightning.losses import PairLogps
from dpo_lightning.losses.dpo import DPO, dpo_loss
from dpo_lightning.losses.sft import SFT, sft_loss


def _logps(chosen, rejected):
    chosen, rejected = torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64)
    return PairLogps(chosen, rejected, torch.ones_like(chosen), torch.ones_like(rejected))


def test_dpo_matches_hand_computation():
    # Δ = (−1 − −2) − (−3 − −2.5) = 1 − (−0.5) = 1.5 ; loss = −log σ(β·Δ) = log(1 + e^{−β·Δ})
    beta = 0.5
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5]), beta
    )
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.75)), rel=1e-6)
    assert chosen_rewards.item() == pytest.approx(0.5 * 1.0)
    assert rejected_rewards.item() == pytest.approx(0.5 * -0.5)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 5.0])
def test_dpo_beta_scales_the_logit(beta):
    generator = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(16, generator=generator, dtype=torch.float64) * 10 for _ in range(4))
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    delta = (pc - rc) - (pr - rr)
    expected = torch.log1p(torch.exp(-beta * delta))
    torch.testing.assert_close(losses.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chosen_rewards.double(), beta * (pc - rc), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rejected_rewards.double(), beta * (pr - rr), rtol=1e-5, atol=1e-6)


def test_dpo_symmetric_inputs_give_log_two():
    logps = torch.tensor([-7.0, -120.0, -3.5])
    losses, _, _ = dpo_loss(logps, logps, logps - 1, logps - 1, beta=0.3)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2.0)))


def test_dpo_is_stable_for_huge_margins():
    losses, _, _ = dpo_loss(torch.tensor([0.0, -1e4]), torch.tensor([-1e4, 0.0]), torch.zeros(2), torch.zeros(2), 1.0)
    assert torch.isfinite(losses).all()
    assert losses[0].item() == pytest.approx(0.0, abs=1e-6)
    assert losses[1].item() == pytest.approx(1e4, rel=1e-6)  # −log σ(−x) ≈ x, no overflow


def test_dpo_computes_in_fp32_from_bf16_inputs():
    args = [torch.tensor([-10.0, -20.0], dtype=torch.bfloat16) for _ in range(4)]
    losses, chosen_rewards, _ = dpo_loss(*args, beta=0.1)
    assert losses.dtype == torch.float32 and chosen_rewards.dtype == torch.float32


def test_dpo_rewards_are_detached():
    policy_chosen = torch.tensor([-1.0], requires_grad=True)
    losses, chosen_rewards, _ = dpo_loss(
        policy_chosen, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.1
    )
    assert losses.requires_grad and not chosen_rewards.requires_grad


def test_dpo_objective_and_gradient_direction():
    chosen = torch.tensor([-5.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    output = DPO(beta=0.1)(PairLogps(chosen, rejected, torch.ones(1), torch.ones(1)), _logps([-5.0], [-5.0]))
    output.losses.mean().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()  # descent raises chosen, lowers rejected
    assert DPO.needs_reference


def test_sft_is_the_chosen_nll():
    policy = _logps([-3.0, -7.0], [-1.0, -1.0])
    torch.testing.assert_close(
        sft_loss(policy.chosen, policy.chosen_tokens), torch.tensor([3.0, 7.0], dtype=torch.float32)
    )
    output = SFT()(policy, None)
    torch.testing.assert_close(output.losses, torch.tensor([3.0, 7.0]))
    assert output.chosen_rewards is None and not SFT.needs_reference
