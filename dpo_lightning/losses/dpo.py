"""`loss=dpo`: Direct Preference Optimization (Rafailov et al. 2023, eq. 7), the sigmoid (Bradley–Terry) loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps, check_beta


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss for a batch of P preference pairs.

        Δ    = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))
        loss = −log σ(β·Δ)

    Args:
        policy_chosen_logps: [P] summed log-probs of the chosen responses under the policy.
        policy_rejected_logps: [P] same for the rejected responses.
        reference_chosen_logps: [P] summed log-probs of the chosen responses under the reference.
        reference_rejected_logps: [P] same for the rejected responses.
        beta: temperature of the implicit reward (paper: 0.1–0.5); larger β keeps the policy closer to
            the reference.

    Returns:
        losses: [P] fp32 per-pair losses.
        chosen_rewards, rejected_rewards: [P] detached implicit rewards β·(log π − log π_ref).
    """
    chosen_logratios = policy_chosen_logps.float() - reference_chosen_logps.float()  # [P]
    rejected_logratios = policy_rejected_logps.float() - reference_rejected_logps.float()  # [P]
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # [P]
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


@dataclass
class DPO(Objective):
    """`loss=dpo`. β: temperature of the implicit reward (paper: 0.1; 0.5 for TL;DR)."""

    beta: float
    name: ClassVar[str] = "dpo"
    reference_free_ok: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_beta(self.beta)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            policy.chosen, policy.rejected, reference.chosen, reference.rejected, self.beta
        )
        return LossOutput(losses, chosen_rewards, rejected_rewards)
