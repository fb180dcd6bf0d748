"""`loss=simpo`: SimPO, Simple Preference Optimization with a reference-free reward (Meng, Xia and Chen 2024,
"SimPO: Simple Preference Optimization with a Reference-Free Reward", arXiv 2405.14734).

The implicit reward is the length-normalised log-likelihood β·log π(y|x)/|y| (paper eq. 4); a target margin
γ > 0 in the Bradley–Terry objective asks the chosen reward to beat the rejected one by at least γ (eq. 6).
No reference model is built or run.

Sources: the loss is the paper's eq. 6; the optional label smoothing (conservative loss, as cDPO) and the
rewards β·log π(y|x)/|y| follow Hugging Face TRL's `CPOTrainer` with `loss_type="simpo"`, whose `simpo_gamma`
is this γ (TRL writes β·(Δ̄ − γ/β), the same number). The authors' repository configures γ through the ratio
γ/β (`gamma_beta_ratio`, 0.5 in its configs) — here give γ itself: `loss.gamma = β · ratio`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses.base import LossOutput, Objective, PairLogps, check_beta, check_range


def simpo_loss(
    policy_chosen_mean_logps: torch.Tensor,
    policy_rejected_mean_logps: torch.Tensor,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SimPO loss for a batch of P preference pairs.

        r(y)   = β · log π(y|x) / |y|                   length-normalised implicit reward
        z      = r(y_w) − r(y_l) − γ
        loss   = −(1 − ε)·log σ(z) − ε·log σ(−z)        (ε = 0: the paper's eq. 6)

    Args:
        policy_chosen_mean_logps: [P] per-token mean log-probs log π(y_w|x)/|y_w| of the chosen responses.
        policy_rejected_mean_logps: [P] same for the rejected responses.
        beta: reward scale β (paper: 2.0–2.5; far larger than DPO's because mean log-probs are small).
        gamma: target reward margin γ ≥ 0, in reward units (the paper tunes it as γ/β ≈ 0.5).
        label_smoothing: ε ∈ [0, 0.5), the assumed probability that a preference label is flipped (TRL).

    Returns:
        losses: [P] fp32 per-pair losses.
        chosen_rewards, rejected_rewards: [P] detached rewards β·log π(y|x)/|y|.
    """
    chosen_rewards = beta * policy_chosen_mean_logps.float()  # [P]
    rejected_rewards = beta * policy_rejected_mean_logps.float()  # [P]
    logits = chosen_rewards - rejected_rewards - gamma  # [P]
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)  # [P]
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


@dataclass
class SimPO(Objective):
    """`loss=simpo`: needs no reference model.

    β comes from the top-level `beta` key (default 0.1, tuned for DPO's summed log-ratios); SimPO's per-token
    mean log-probs want β ≈ 2: run `loss=simpo beta=2.0 loss.gamma=1.0` (γ/β = 0.5, the authors' default).

    beta: reward scale β > 0.
    gamma: target margin γ ≥ 0 between chosen and rejected rewards (0: no margin).
    label_smoothing: ε ∈ [0, 0.5); 0 is the paper's loss.
    """

    beta: float
    gamma: float = 0.5
    label_smoothing: float = 0.0
    name: ClassVar[str] = "simpo"
    needs_reference: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_beta(self.beta)
        if not self.gamma >= 0:
            raise ConfigError("loss.gamma", f"must be ≥ 0, got {self.gamma}")
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            *policy.mean_per_token(), self.beta, self.gamma, self.label_smoothing
        )
        return LossOutput(losses, chosen_rewards, rejected_rewards)
