"""`loss=aot`: AOT, alignment via optimal transport (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs
via Optimal Transport", arXiv 2406.05882).

AOT asks for first-order stochastic dominance between two distributions rather than a margin per pair: every
quantile of the "better" distribution should exceed the same quantile of the "worse" one. In one dimension the
optimal transport between two empirical distributions matches their sorted samples, so the loss is a smooth
penalty (the label-smoothed logistic loss, as cDPO) on the differences of sorted samples within the batch:

- `paired: true` (default; TRL's `loss_type="aot"`, which TRL documents as the variant for paired data): the
  policy's chosen-over-rejected log-ratio π_c − π_r must dominate the reference's ref_c − ref_r.
      d_(i) = sort(π_c − π_r)_(i) − sort(ref_c − ref_r)_(i)
- `paired: false` (TRL's `loss_type="aot_pair"`, which TRL documents as the variant for unpaired data despite its
  name): the chosen rewards' distribution must dominate the rejected rewards'; each side is sorted on its own,
  so the pairing of the data is not used.
      d_(i) = sort(π_c − ref_c)_(i) − sort(π_r − ref_r)_(i)

    loss_(i) = −(1 − ε)·log σ(β·d_(i)) − ε·log σ(−β·d_(i))

The i-th loss belongs to the i-th quantile, not to pair i: only the batch mean is meaningful. Quantiles come
from the pairs of one forward batch (per device), so AOT wants large per-device batches.

Sources: Hugging Face TRL's `DPOTrainer.dpo_loss` (`aot`, `aot_pair`) for the sorted differences, the logistic
penalty and `label_smoothing`; TRL's documentation and the paper's Figure 1 for which variant is which. The
paper also offers a soft (differentiable) sort and other convex costs; only the hard sort and the logistic cost
are here. Rewards logged are the per-pair DPO rewards, as in TRL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps, check_beta, check_range, dpo_rewards
from dpo_lightning.losses.cdpo import cdpo_loss


def aot_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    paired: bool = True,
) -> torch.Tensor:
    """The AOT loss for a batch of P preference pairs.

        paired:   d = sort(π_c − π_r) − sort(ref_c − ref_r)        (TRL "aot")
        unpaired: d = sort(π_c − ref_c) − sort(π_r − ref_r)        (TRL "aot_pair")
        loss_(i) = −(1 − ε)·log σ(β·d_(i)) − ε·log σ(−β·d_(i))

    Args:
        policy_chosen_logps: [P] summed log-probs of the chosen responses under the policy.
        policy_rejected_logps: [P] same for the rejected responses.
        reference_chosen_logps: [P] summed log-probs of the chosen responses under the reference.
        reference_rejected_logps: [P] same for the rejected responses.
        beta: temperature β > 0 of the logistic penalty.
        label_smoothing: ε ∈ [0, 0.5), as cDPO (0: the plain logistic penalty).
        paired: compare the policy's margins with the reference's (true) or chosen with rejected rewards (false).

    Returns:
        losses: [P] fp32 losses of the P quantiles, ascending order (not aligned with the pairs).
    """
    pc, pr = policy_chosen_logps.float(), policy_rejected_logps.float()  # [P], [P]
    rc, rr = reference_chosen_logps.float(), reference_rejected_logps.float()  # [P], [P]
    better, worse = (pc - pr, rc - rr) if paired else (pc - rc, pr - rr)  # [P], [P]
    quantile_margins = torch.sort(better).values - torch.sort(worse).values  # [P]
    return cdpo_loss(quantile_margins, beta, label_smoothing)


@dataclass
class AOT(Objective):
    """`loss=aot`.

    beta: temperature β > 0 (the top-level `beta`).
    label_smoothing: ε ∈ [0, 0.5) (TRL's default 0).
    paired: true, the policy's log-ratio margins dominate the reference's (TRL "aot", default); false, chosen
        rewards dominate rejected rewards (TRL "aot_pair").
    """

    beta: float
    label_smoothing: float = 0.0
    paired: bool = True
    name: ClassVar[str] = "aot"

    def __post_init__(self) -> None:
        check_beta(self.beta)
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        losses = aot_loss(
            policy.chosen,
            policy.rejected,
            reference.chosen,
            reference.rejected,
            self.beta,
            self.label_smoothing,
            self.paired,
        )
        return LossOutput(losses, *dpo_rewards(policy, reference, self.beta))
