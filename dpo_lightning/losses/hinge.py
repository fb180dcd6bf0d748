"""`loss=hinge`: the hinge (SLiC) loss on implicit-reward margins (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood
Calibration with Human Feedback", arXiv 2305.10425).

SLiC's calibration loss max(0, δ − log π(y_w|x) + log π(y_l|x)) asks the chosen response to out-score the
rejected one by a margin δ. Written on reference log-ratios with δ = 1/β and scaled by β, it is

    loss = relu(1 − β·Δ)

which is zero once Δ ≥ 1/β: pairs already separated by the margin stop contributing.

Sources: Hugging Face TRL's `DPOTrainer.dpo_loss` with `loss_type="hinge"` computes exactly this (TRL credits the
normalised-likelihood form to RSO, Liu et al. 2023, arXiv 2309.06657). SLiC itself scores with the policy alone
and adds a cross-entropy regulariser on reference outputs; `reference=none` (π_ref ≡ 1) gives SLiC's
calibration term with margin 1/β, without that regulariser (combine with `sft` through `loss=combo` for it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.losses.base import MarginObjective


def hinge_loss(margins: torch.Tensor, beta: float) -> torch.Tensor:
    """The hinge loss for a batch of P preference pairs.

        Δ    = (π_c − ref_c) − (π_r − ref_r)
        loss = max(0, 1 − β·Δ)

    Args:
        margins: [P] implicit-reward margins Δ (summed log-prob ratios, per unit β).
        beta: inverse margin β > 0: the loss vanishes once Δ ≥ 1/β.

    Returns:
        losses: [P] fp32 per-pair losses.
    """
    return torch.relu(1 - beta * margins.float())


@dataclass
class Hinge(MarginObjective):
    """`loss=hinge`; also runs reference-free (`reference=none`), which is SLiC's calibration loss.

    beta: inverse margin β > 0 (the top-level `beta`): pairs with Δ ≥ 1/β give no gradient.
    """

    name: ClassVar[str] = "hinge"
    reference_free_ok: ClassVar[bool] = True
    margin_loss = hinge_loss
