"""`loss=ipo`: Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical Paradigm to Understand
Learning from Human Preferences", arXiv 2310.12036).

IPO regresses the implicit-reward margin onto a fixed target instead of pushing it to infinity, which DPO does
on deterministic preferences: the loss (Δ − 1/(2β))² is minimal at Δ = 1/(2β), where the paper's τ is this β
(larger β: smaller target margin, policy kept closer to the reference).

Sources: the paper's eq. 17 for the loss. What the log-probs are differs between implementations:
- `length_normalized: false` (default): summed response log-probs, as the reference implementation's `ipo` loss
  and the paper's sequence-level h(y_w, y_l).
- `length_normalized: true`: per-token mean log-probs, as Hugging Face TRL (`DPOTrainer.concatenated_forward`
  divides the summed log-probs by the response length when `loss_type="ipo"`). The target 1/(2β) then applies
  to the per-token margin, which is about |y| times smaller, so β usually wants retuning.
The rewards logged are β·(π − ref) on the same log-probs the loss uses (per-token means when length-normalised,
as in TRL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.losses.base import LossOutput, MarginObjective, PairLogps


def ipo_loss(margins: torch.Tensor, beta: float) -> torch.Tensor:
    """The IPO loss for a batch of P preference pairs (paper eq. 17, τ = β).

        Δ    = (π_c − ref_c) − (π_r − ref_r)
        loss = (Δ − 1/(2β))²

    Args:
        margins: [P] log-ratio margins Δ, of summed or of per-token mean log-probs.
        beta: regularisation β > 0: the target margin is 1/(2β).

    Returns:
        losses: [P] fp32 per-pair losses.
    """
    return (margins.float() - 1 / (2 * beta)) ** 2


def per_token(logps: PairLogps) -> PairLogps:
    """The same pairs with each log-prob divided by its response length."""
    return PairLogps(*logps.mean_per_token(), logps.chosen_tokens, logps.rejected_tokens)


@dataclass
class IPO(MarginObjective):
    """`loss=ipo`; also runs reference-free (`reference=none`).

    beta: regularisation β > 0 (the top-level `beta`; the paper's τ).
    length_normalized: per-token mean log-probs (TRL) instead of sums (reference implementation, default).
    """

    length_normalized: bool = False
    name: ClassVar[str] = "ipo"
    reference_free_ok: ClassVar[bool] = True
    margin_loss = ipo_loss

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        if self.length_normalized:
            policy, reference = per_token(policy), per_token(reference)
        return super().__call__(policy, reference)
