"""`loss=sppo_hard`: SPPO, self-play preference optimisation, with hard labels (Wu et al. 2024, "Self-Play
Preference Optimization for Language Model Alignment", arXiv 2405.00675).

SPPO regresses each response's log-ratio onto η·(P̂(y ≻ π_t) − ½), its estimated win probability against the
current policy, centred. With hard labels (winner P̂ = 1, loser P̂ = 0) and η = 1/β this is

    loss = (π_c − ref_c − 1/(2β))² + (π_r − ref_r + 1/(2β))²

minimal at π_c − ref_c = 1/(2β), π_r − ref_r = −1/(2β): the chosen response's likelihood is pulled up and the
rejected one's down by fixed amounts, not only their difference.

Sources: Hugging Face TRL's `DPOTrainer.dpo_loss` with `loss_type="sppo_hard"`, which is this hard-label version.
The paper uses soft win probabilities estimated with a preference model (PairRM) over several samples per prompt,
and its reference is the previous iteration's policy π_t; with a fixed reference (`reference=model`) one run is
one SPPO iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.losses.base import TwoTermObjective


def sppo_hard_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hard-label SPPO loss for a batch of P preference pairs.

        loss = (π_c − ref_c − 1/(2β))² + (π_r − ref_r + 1/(2β))²

    Args:
        chosen_logratios: [P] π_c − ref_c, summed log-prob ratios of the chosen responses.
        rejected_logratios: [P] π_r − ref_r, the same for the rejected responses.
        beta: β > 0, the inverse of the paper's η: the targets are ±1/(2β).

    Returns:
        losses: [P] fp32 per-pair losses, the sum of the two terms below.
        chosen_losses: [P] (π_c − ref_c − 1/(2β))².
        rejected_losses: [P] (π_r − ref_r + 1/(2β))².
    """
    target = 1 / (2 * beta)
    chosen_losses = (chosen_logratios.float() - target) ** 2  # [P]
    rejected_losses = (rejected_logratios.float() + target) ** 2  # [P]
    return chosen_losses + rejected_losses, chosen_losses, rejected_losses


@dataclass
class SPPOHard(TwoTermObjective):
    """`loss=sppo_hard`. beta: β > 0 (the top-level `beta`), targets ±1/(2β) for the log-ratios.

    Logged terms: `chosen_loss` and `rejected_loss`, the batch means of the two squared errors.
    """

    name: ClassVar[str] = "sppo_hard"
    loss_terms = sppo_hard_loss
