"""`loss=apo_zero` / `loss=apo_down`: Anchored Preference Optimization (D'Oosterlinck et al. 2024, "Anchored
Preference Optimization and Contrastive Revisions: Addressing Underspecification in Alignment", arXiv 2408.06266).

DPO only constrains the margin between the two rewards, so it leaves open whether the chosen likelihood should go
up or down. APO anchors each reward r = β·(π − ref) separately, which says which way each response should move:

- `apo_zero` (paper eq. 7): raise the chosen reward, lower the rejected one, each towards the sigmoid's
  saturation. Use it when the chosen outputs are better than what the model already produces (e.g. chosen
  answers from a stronger model).
- `apo_down` (paper eq. 8): lower the chosen reward, and the rejected one further (the margin term). Use it when
  the model is already better than the chosen outputs, so imitating them would make it worse. Its gradient on
  π_c, β·[σ'(r_c) − σ'(r_c − r_r)], is ≥ 0 (descent lowers the chosen likelihood) while |r_c| ≤ |r_c − r_r|: it is
  0 at the start of training (all rewards 0, where DPO's is < 0) and positive once the margin r_c − r_r exceeds |r_c|.

Sources: Hugging Face TRL's `DPOTrainer.dpo_loss` with `loss_type="apo_zero"` / `"apo_down"`, which add the
constant 1 to the paper's eqs. 7–8 (so the losses lie in [0, 2]); the gradients are the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.losses.base import TwoTermObjective


def apo_zero_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The APO-zero loss for a batch of P preference pairs (paper eq. 7, plus 1).

        r_c  = β·(π_c − ref_c),  r_r = β·(π_r − ref_r)
        loss = [1 − σ(r_c)] + [σ(r_r)]

    Args:
        chosen_logratios: [P] π_c − ref_c, summed log-prob ratios of the chosen responses.
        rejected_logratios: [P] π_r − ref_r, the same for the rejected responses.
        beta: temperature β > 0 of the rewards.

    Returns:
        losses: [P] fp32 per-pair losses, the sum of the two terms below.
        chosen_losses: [P] 1 − σ(r_c), falls as the chosen likelihood rises.
        rejected_losses: [P] σ(r_r), falls as the rejected likelihood falls.
    """
    chosen_rewards, rejected_rewards = beta * chosen_logratios.float(), beta * rejected_logratios.float()  # [P]
    chosen_losses = torch.sigmoid(-chosen_rewards)  # [P] = 1 − σ(r_c)
    rejected_losses = torch.sigmoid(rejected_rewards)  # [P]
    return chosen_losses + rejected_losses, chosen_losses, rejected_losses


def apo_down_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The APO-down loss for a batch of P preference pairs (paper eq. 8, plus 1).

        r_c  = β·(π_c − ref_c),  r_r = β·(π_r − ref_r)
        loss = [σ(r_c)] + [1 − σ(r_c − r_r)]

    Args:
        chosen_logratios: [P] π_c − ref_c, summed log-prob ratios of the chosen responses.
        rejected_logratios: [P] π_r − ref_r, the same for the rejected responses.
        beta: temperature β > 0 of the rewards.

    Returns:
        losses: [P] fp32 per-pair losses, the sum of the two terms below.
        chosen_losses: [P] σ(r_c), falls as the chosen likelihood falls.
        rejected_losses: [P] 1 − σ(r_c − r_r), falls as the rejected reward drops below the chosen one (the
            margin term; it also pushes the chosen reward up, less than the first term pushes it down near
            r_c = r_r = 0).
    """
    chosen_rewards, rejected_rewards = beta * chosen_logratios.float(), beta * rejected_logratios.float()  # [P]
    chosen_losses = torch.sigmoid(chosen_rewards)  # [P]
    rejected_losses = torch.sigmoid(rejected_rewards - chosen_rewards)  # [P] = 1 − σ(r_c − r_r)
    return chosen_losses + rejected_losses, chosen_losses, rejected_losses


@dataclass
class APOZero(TwoTermObjective):
    """`loss=apo_zero`: chosen up, rejected down; for chosen outputs better than the model's.

    beta: temperature β > 0 of the rewards (the top-level `beta`; the paper: 0.1).
    """

    name: ClassVar[str] = "apo_zero"
    loss_terms = apo_zero_loss


@dataclass
class APODown(TwoTermObjective):
    """`loss=apo_down`: chosen down, rejected further down; for a model better than the chosen outputs.

    beta: temperature β > 0 of the rewards (the top-level `beta`; the paper: 0.1).
    """

    name: ClassVar[str] = "apo_down"
    loss_terms = apo_down_loss
