"""`loss=nca_pair`: NCA, noise contrastive alignment, pairwise (Chen et al. 2024, "Noise Contrastive Alignment of
Language Models with Explicit Rewards", arXiv 2402.05369).

DPO (the paper's InfoNCA with K = 2) only moves the margin between the two responses, so both likelihoods can fall
together. NCA scores each response on its own against the reference: it raises the chosen reward r_c towards
positive values and pushes both rewards away from large positive values,

    loss = −log σ(r_c) − ½·log σ(−r_c) − ½·log σ(−r_r),      r = β·(π − ref)

which is meant to keep the chosen likelihood from decreasing (the paper's motivation).

Sources: the paper's NCA loss for pairwise preference data (K = 2, winner's target 1, loser's 0), as Hugging Face
TRL's `DPOTrainer.dpo_loss` with `loss_type="nca_pair"`; they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.losses.base import TwoTermObjective


def nca_pair_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairwise NCA loss for a batch of P preference pairs.

        r_c  = β·(π_c − ref_c),  r_r = β·(π_r − ref_r)
        loss = [−log σ(r_c) − ½·log σ(−r_c)] + [−½·log σ(−r_r)]

    Args:
        chosen_logratios: [P] π_c − ref_c, summed log-prob ratios of the chosen responses.
        rejected_logratios: [P] π_r − ref_r, the same for the rejected responses.
        beta: temperature β > 0 of the rewards.

    Returns:
        losses: [P] fp32 per-pair losses, the sum of the two terms below.
        chosen_losses: [P] the chosen response's term −log σ(r_c) − ½·log σ(−r_c).
        rejected_losses: [P] the rejected response's term −½·log σ(−r_r).
    """
    chosen_rewards, rejected_rewards = beta * chosen_logratios.float(), beta * rejected_logratios.float()  # [P]
    chosen_losses = -F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards)  # [P]
    rejected_losses = -0.5 * F.logsigmoid(-rejected_rewards)  # [P]
    return chosen_losses + rejected_losses, chosen_losses, rejected_losses


@dataclass
class NCAPair(TwoTermObjective):
    """`loss=nca_pair`. beta: temperature β > 0 of the rewards (the top-level `beta`; the paper's α, 0.01 there).

    Logged terms: `chosen_loss` and `rejected_loss`, the batch means of the two terms.
    """

    name: ClassVar[str] = "nca_pair"
    loss_terms = nca_pair_loss
