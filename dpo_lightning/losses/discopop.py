"""`loss=discopop`: DiscoPOP, the log-ratio modulated loss (Chris Lu et al. 2024, "Discovering Preference
Optimization Algorithms with and for Large Language Models", arXiv 2406.08414).

An LLM-discovered blend of the logistic (DPO) loss and the exponential loss, weighted by a sigmoid of the margin:
pairs the policy gets wrong (β·Δ ≪ 0) get the logistic loss, pairs it gets right (β·Δ ≫ 0) the exponential loss,
whose gradient vanishes faster. τ sets how sharp the switch is.

    z    = β·Δ,   m = σ(z/τ)
    loss = (1 − m)·(−log σ(z)) + m·exp(−z)

The loss is not convex: with τ = 0.05 it has a local minimum near z ≈ −0.12 and a local maximum near z ≈ 0.07,
so at z = 0 (policy = reference) a pair's own gradient lowers its margin; elsewhere it raises it, as DPO.

Sources: the paper's eq. 5 (τ = 0.05) and Hugging Face TRL's `DPOTrainer.dpo_loss` with `loss_type="discopop"`
(`discopop_tau`) agree. The code listing the search discovered uses σ(Δ) as the weight, which is eq. 5 exactly
when τ = β (the paper trains with β = 0.05); with another β set `loss.tau=${beta}` to reproduce that code.
Numerics differ from TRL: m·exp(−z) is computed as exp(log σ(z/τ) − z), which is finite where TRL's
σ(z/τ)·exp(−z) gives 0·∞ = NaN (z below about −88 in fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses.base import MarginObjective


def discopop_loss(margins: torch.Tensor, beta: float, tau: float) -> torch.Tensor:
    """The DiscoPOP (log-ratio modulated) loss for a batch of P preference pairs (paper eq. 5).

        z    = β·Δ,   Δ = (π_c − ref_c) − (π_r − ref_r)
        loss = (1 − σ(z/τ))·(−log σ(z)) + σ(z/τ)·exp(−z)

    Args:
        margins: [P] implicit-reward margins Δ (summed log-prob ratios, per unit β).
        beta: temperature β > 0 of the implicit reward.
        tau: temperature τ > 0 of the mixing weight σ(z/τ) (paper: 0.05); small τ: a sharp switch at z = 0.

    Returns:
        losses: [P] fp32 per-pair losses.
    """
    logits = beta * margins.float()  # [P]
    logistic = -F.logsigmoid(logits)  # [P]
    weighted_exponential = torch.exp(F.logsigmoid(logits / tau) - logits)  # [P] σ(z/τ)·exp(−z)
    return (1 - torch.sigmoid(logits / tau)) * logistic + weighted_exponential


@dataclass
class DiscoPOP(MarginObjective):
    """`loss=discopop`.

    beta: temperature β > 0 (the top-level `beta`; the paper uses 0.05).
    tau: τ > 0, temperature of the logistic/exponential mixing weight (paper and TRL: 0.05).
    """

    tau: float = 0.05
    name: ClassVar[str] = "discopop"
    margin_loss = discopop_loss
    loss_args: ClassVar[tuple[str, ...]] = ("tau",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tau > 0:
            raise ConfigError("loss.tau", f"must be > 0, got {self.tau}")
