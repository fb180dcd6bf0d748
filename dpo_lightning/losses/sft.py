"""Supervised fine-tuning on the preferred response (the reference implementation's SFT stage)."""

from __future__ import annotations

import torch

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps


def sft_loss(policy_chosen_logps: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the chosen responses.

    Args:
        policy_chosen_logps: [P] summed log-probs of the chosen responses under the policy.

    Returns:
        losses: [P] fp32, −log π(y_w|x) summed over response tokens (as the reference implementation does;
        the batch loss is their mean over pairs).
    """
    return -policy_chosen_logps.float()


class SFT(Objective):
    """`loss=sft`: maximum likelihood on the chosen response; needs no reference model."""

    needs_reference = False

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        return LossOutput(sft_loss(policy.chosen))
