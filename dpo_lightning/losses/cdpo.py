"""`loss=cdpo`: conservative DPO, the sigmoid loss with label smoothing (Mitchell 2023, "A note on DPO with noisy
preferences & relationship to IPO", https://ericmitchell.ai/cdpo.pdf).

If a fraction ε of the preference labels is assumed flipped, the Bradley–Terry target for "y_w beats y_l" is
1 − ε rather than 1, and the cross-entropy against that soft target is the loss below. Unlike DPO its minimum is
finite: it is reached at β·Δ = log((1 − ε)/ε), so the implicit reward margin stops growing there.

Sources: the reference implementation's `label_smoothing` (the DPO repository's `preference_loss`) and Hugging
Face TRL's `DPOTrainer.dpo_loss` with `loss_type="sigmoid"` compute exactly this; they agree with the note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.losses.base import LabelSmoothedMarginObjective


def cdpo_loss(margins: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """The conservative DPO loss for a batch of P preference pairs.

        Δ    = (π_c − ref_c) − (π_r − ref_r)
        loss = −(1 − ε)·log σ(β·Δ) − ε·log σ(−β·Δ)          (ε = 0: DPO)

    Args:
        margins: [P] implicit-reward margins Δ (summed log-prob ratios, per unit β).
        beta: temperature β > 0 of the implicit reward.
        label_smoothing: ε ∈ [0, 0.5), the assumed probability that a pair's preference label is flipped.

    Returns:
        losses: [P] fp32 per-pair losses.
    """
    logits = beta * margins.float()  # [P]
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


@dataclass
class CDPO(LabelSmoothedMarginObjective):
    """`loss=cdpo`: DPO with label smoothing; also runs reference-free (`reference=none`).

    beta: temperature β > 0 (the top-level `beta`).
    label_smoothing: ε ∈ [0, 0.5), assumed share of flipped labels (default 0.1; 0 is DPO; the note fixes no
        default).
    """

    name: ClassVar[str] = "cdpo"
    reference_free_ok: ClassVar[bool] = True
    margin_loss = cdpo_loss
