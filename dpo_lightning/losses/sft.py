"""`loss=sft` / `loss=preferred_ft`: maximum likelihood on the chosen response.

`sft` is the reference implementation's SFT stage (the first stage of the paper's pipeline). `preferred_ft`
is the DPO paper's Preferred-FT baseline (§6): the same objective, run on the preference data's chosen
responses starting from the SFT model — one loss, two documented uses, so it lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps


def sft_loss(
    policy_chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor, length_normalized: bool = False
) -> torch.Tensor:
    """Negative log-likelihood of the chosen responses.

        loss = −log π(y_w|x)               summed over response tokens (reference implementation), or
        loss = −log π(y_w|x) / |y_w|       per-token mean (TRL's SFT term), with `length_normalized`

    Args:
        policy_chosen_logps: [P] summed log-probs of the chosen responses under the policy.
        chosen_tokens: [P] their lengths in tokens.
        length_normalized: divide each NLL by its response length.

    Returns:
        losses: [P] fp32 per-pair losses (the batch loss is their mean over pairs).
    """
    losses = -policy_chosen_logps.float()
    return losses / chosen_tokens.clamp(min=1) if length_normalized else losses


@dataclass
class SFT(Objective):
    """`loss=sft` (and `loss=preferred_ft`): needs no reference model.

    length_normalized: per-token mean NLL instead of the sum (the reference implementation sums).
    """

    length_normalized: bool = False
    name: ClassVar[str] = "sft"
    needs_reference: ClassVar[bool] = False

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        return LossOutput(sft_loss(policy.chosen, policy.chosen_tokens, self.length_normalized))
