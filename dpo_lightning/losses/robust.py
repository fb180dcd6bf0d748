"""`loss=robust`: robust DPO, an unbiased loss under random label flips (Chowdhury, Kini and Natarajan 2024,
"Provably Robust DPO: Aligning Language Models with Noisy Feedback", arXiv 2403.00409).

If each preference label is flipped independently with known probability ε, the DPO loss of the observed pair
ℓ(Δ) = −log σ(β·Δ) is a biased estimate of the loss on the clean label. The paper de-biases it:

    loss = [(1 − ε)·ℓ(Δ) − ε·ℓ(−Δ)] / (1 − 2ε)

whose expectation over the flip equals the clean DPO loss. Unlike cDPO (which smooths the target and so is
bounded below), this loss is unbounded below for ε > 0: as β·Δ → ∞ it falls like −ε·β·Δ / (1 − 2ε); its gradient
stays bounded and its expectation is the DPO loss, which is what the paper's guarantees are about.

Sources: the paper's unbiased loss and Hugging Face TRL's `DPOTrainer.dpo_loss` with `loss_type="robust"` (where ε is
`label_smoothing`) compute the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.losses.base import LabelSmoothedMarginObjective


def robust_loss(margins: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """The robust DPO loss for a batch of P preference pairs.

        Δ    = (π_c − ref_c) − (π_r − ref_r)
        loss = [(1 − ε)·(−log σ(β·Δ)) − ε·(−log σ(−β·Δ))] / (1 − 2ε)        (ε = 0: DPO)

    Args:
        margins: [P] implicit-reward margins Δ (summed log-prob ratios, per unit β).
        beta: temperature β > 0 of the implicit reward.
        label_smoothing: ε ∈ [0, 0.5), the known probability that a preference label is flipped.

    Returns:
        losses: [P] fp32 per-pair losses (unbounded below for ε > 0).
    """
    logits = beta * margins.float()  # [P]
    observed = -F.logsigmoid(logits)  # [P] DPO loss of the label as given
    flipped = -F.logsigmoid(-logits)  # [P] DPO loss of the opposite label
    return ((1 - label_smoothing) * observed - label_smoothing * flipped) / (1 - 2 * label_smoothing)


@dataclass
class Robust(LabelSmoothedMarginObjective):
    """`loss=robust`: DPO de-biased for a known label-flip rate; also runs reference-free (`reference=none`).

    beta: temperature β > 0 (the top-level `beta`; the paper: 0.01).
    label_smoothing: ε ∈ [0, 0.5), the label-flip rate (default 0.1, the paper's; 0 is DPO).
    """

    name: ClassVar[str] = "robust"
    reference_free_ok: ClassVar[bool] = True
    margin_loss = robust_loss
