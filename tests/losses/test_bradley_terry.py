"""The Bradley–Terry loss of the reward model against a float64 hand computation."""

import math

import pytest
import torch

from dpo_lightning.losses.bradley_terry import bradley_terry_loss

CHOSEN = [1.5, -0.25, 0.0, 3.0, -2.0]
REJECTED = [0.5, 0.75, 0.0, -1.0, -2.5]
MARGIN = [0.0, 1.0, -0.5, 2.0, 0.25]


def _by_hand(chosen, rejected, margin=None, center=0.0) -> list[float]:
    """−log(1 / (1 + exp(−(r_w − r_l − m)))) + c · (r_w + r_l)², pair by pair, in Python floats."""
    margin = margin or [0.0] * len(chosen)
    return [
        -math.log(1 / (1 + math.exp(-(win - lose - m)))) + center * (win + lose) ** 2
        for win, lose, m in zip(chosen, rejected, margin, strict=True)
    ]


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [0.0, 0.01, 0.5])
def test_the_loss_is_the_hand_computation(with_margin, center):
    margin = torch.tensor(MARGIN, dtype=torch.float64) if with_margin else None
    losses = bradley_terry_loss(
        torch.tensor(CHOSEN, dtype=torch.float64), torch.tensor(REJECTED, dtype=torch.float64), margin, center
    )
    assert losses.dtype == torch.float32 and losses.shape == (len(CHOSEN),)
    expected = _by_hand(CHOSEN, REJECTED, MARGIN if with_margin else None, center)
    torch.testing.assert_close(losses.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_the_batch_mean_is_trls_loss():
    """TRL: mean_k −log σ(r_w − r_l) + c · mean_k (r_w + r_l)²."""
    chosen, rejected, c = torch.tensor(CHOSEN), torch.tensor(REJECTED), 0.01
    trl = -torch.nn.functional.logsigmoid(chosen - rejected).mean() + c * ((chosen + rejected) ** 2).mean()
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, center_coefficient=c).mean(), trl)


def test_gradients_raise_the_chosen_reward_and_lower_the_rejected_one():
    chosen = torch.tensor(CHOSEN, requires_grad=True)
    rejected = torch.tensor(REJECTED, requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent: r_w up, r_l down
    torch.testing.assert_close(chosen.grad, -rejected.grad)  # a function of the difference alone


def test_the_centring_term_pulls_both_rewards_towards_zero():
    chosen = torch.tensor([5.0, -5.0], requires_grad=True)
    rejected = torch.tensor([5.0, -5.0], requires_grad=True)  # ties: the first term pushes them apart equally
    bradley_terry_loss(chosen, rejected, center_coefficient=1.0).sum().backward()
    assert chosen.grad[0] > 0 and rejected.grad[0] > 0  # a positive sum: descent lowers both
    assert chosen.grad[1] < 0 and rejected.grad[1] < 0  # a negative sum: descent raises both


def test_large_rewards_stay_finite():
    chosen = torch.tensor([-1e4, 1e4, 200.0, -200.0], requires_grad=True)
    rejected = torch.tensor([1e4, -1e4, -200.0, 200.0], requires_grad=True)
    losses = bradley_terry_loss(chosen, rejected)
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses, torch.tensor([2e4, 0.0, 0.0, 400.0]))  # −log σ(x) → −x for x ≪ 0
    losses.sum().backward()
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    half = bradley_terry_loss(chosen.detach().half(), rejected.detach().half())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
