"""`loss=exo_pair`: EXO, efficient exact optimisation, pairwise (Ji et al. 2024, "Towards Efficient Exact
Optimization of Language Model Alignment", arXiv 2402.00856).

EXO minimises the reverse KL divergence KL(p_θ ‖ p_data) between the model's preference distribution over the two
responses, p_θ = (σ(β·Δ), σ(−β·Δ)), and the (label-smoothed) data distribution p_data = (1 − ε, ε). DPO minimises
the forward KL instead; the reverse KL is mode-seeking. The loss is ≥ 0, zero at β·Δ = log((1 − ε)/ε) (≈ 6.9 for
ε = 1e-3), and ε must be > 0 for p_data to have full support.

Sources: the paper's eq. 16 with K = 2 responses, as Hugging Face TRL's `DPOTrainer.dpo_loss` with
`loss_type="exo_pair"`. TRL silently replaces `label_smoothing = 0` by 1e-3; here 1e-3 is the default and ε must
lie in (0, 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses.base import MarginObjective


def exo_pair_loss(margins: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """The pairwise EXO loss for a batch of P preference pairs.

        Δ    = (π_c − ref_c) − (π_r − ref_r)
        loss = σ(β·Δ)·(log σ(β·Δ) − log(1 − ε)) + σ(−β·Δ)·(log σ(−β·Δ) − log ε)

    Args:
        margins: [P] implicit-reward margins Δ (summed log-prob ratios, per unit β).
        beta: temperature β > 0 of the implicit reward.
        label_smoothing: ε ∈ (0, 0.5), the probability the smoothed data distribution gives the rejected response.

    Returns:
        losses: [P] fp32 per-pair losses, ≥ 0.
    """
    logits = beta * margins.float()  # [P]
    log_p_chosen, log_p_rejected = F.logsigmoid(logits), F.logsigmoid(-logits)  # [P], [P]
    return log_p_chosen.exp() * (log_p_chosen - math.log1p(-label_smoothing)) + log_p_rejected.exp() * (
        log_p_rejected - math.log(label_smoothing)
    )


@dataclass
class EXOPair(MarginObjective):
    """`loss=exo_pair`.

    beta: temperature β > 0 (the top-level `beta`; the paper's β_r, 0.1 there).
    label_smoothing: ε ∈ (0, 0.5) of the target distribution (TRL's default 1e-3).
    """

    label_smoothing: float = 1e-3
    name: ClassVar[str] = "exo_pair"
    margin_loss = exo_pair_loss
    loss_args: ClassVar[tuple[str, ...]] = ("label_smoothing",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.label_smoothing < 0.5:
            raise ConfigError("loss.label_smoothing", f"must be in (0, 0.5), got {self.label_smoothing}")
