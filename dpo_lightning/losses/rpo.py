"""`loss=rpo`: DPO plus an NLL term on the chosen response, as in Iterative Reasoning Preference Optimization (Pang
et al. 2024, "Iterative Reasoning Preference Optimization", arXiv 2404.19733).

DPO can lower the chosen response's likelihood as long as the rejected one falls faster. The NLL term keeps the
chosen likelihood up; the paper finds it crucial on reasoning tasks:

    loss = −log σ(β·Δ) + α·(−log π(y_w|x) / |y_w|)

With α = 0 this is DPO exactly (`dpo_loss` computes the first term).

Sources: Hugging Face TRL's `DPOConfig.rpo_alpha` (α, "the paper suggests 1.0") adds α times a per-token NLL of
the chosen responses to each pair's DPO loss. Differences:
- Here the NLL is each pair's own per-token mean over its response tokens (as `sft` with `length_normalized`);
  TRL uses one cross-entropy over all chosen tokens of the batch (long responses weigh more, and every pair
  gets the same value).
- The paper normalises the chosen sequence's NLL by its whole length, prompt included (|x| + |c_w| + |y_w|);
  here, as in TRL, only response tokens count.
- The paper's reference is the previous iteration's model; with a fixed reference one run is one iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses.base import LossOutput, Objective, PairLogps, check_beta
from dpo_lightning.losses.dpo import dpo_loss
from dpo_lightning.losses.sft import sft_loss


def rpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    chosen_tokens: torch.Tensor,
    beta: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The RPO (DPO + NLL) loss for a batch of P preference pairs.

        Δ    = (π_c − ref_c) − (π_r − ref_r)
        loss = −log σ(β·Δ) + α·(−π_c / |y_w|)

    Args:
        policy_chosen_logps: [P] summed log-probs of the chosen responses under the policy.
        policy_rejected_logps: [P] same for the rejected responses.
        reference_chosen_logps: [P] summed log-probs of the chosen responses under the reference.
        reference_rejected_logps: [P] same for the rejected responses.
        chosen_tokens: [P] lengths |y_w| of the chosen responses in tokens.
        beta: temperature β > 0 of the implicit reward.
        alpha: weight α ≥ 0 of the NLL term (paper: 1; 0: DPO).

    Returns:
        losses: [P] fp32 per-pair losses, dpo_losses + α·nll.
        chosen_rewards, rejected_rewards: [P] detached implicit rewards β·(log π − log π_ref).
        dpo_losses: [P] the DPO term −log σ(β·Δ).
        nll: [P] the per-token mean NLL −π_c / |y_w| of the chosen responses.
    """
    dpo_losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta
    )
    nll = sft_loss(policy_chosen_logps, chosen_tokens, length_normalized=True)  # [P]
    return dpo_losses + alpha * nll, chosen_rewards, rejected_rewards, dpo_losses, nll


@dataclass
class RPO(Objective):
    """`loss=rpo`.

    beta: temperature β > 0 (the top-level `beta`; the paper: 0.1).
    alpha: weight α ≥ 0 of the chosen response's per-token NLL (paper and TRL's suggestion: 1.0; 0 is DPO).
    Logged terms: `nll_loss` (mean per-token NLL of the chosen responses, TRL's name) and `dpo_loss`.
    """

    beta: float
    alpha: float = 1.0
    name: ClassVar[str] = "rpo"

    def __post_init__(self) -> None:
        check_beta(self.beta)
        if not self.alpha >= 0:
            raise ConfigError("loss.alpha", f"must be ≥ 0, got {self.alpha}")

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        losses, chosen_rewards, rejected_rewards, dpo_losses, nll = rpo_loss(
            policy.chosen,
            policy.rejected,
            reference.chosen,
            reference.rejected,
            policy.chosen_tokens,
            self.beta,
            self.alpha,
        )
        metrics = {"nll_loss": nll.detach().mean(), "dpo_loss": dpo_losses.detach().mean()}
        return LossOutput(losses, chosen_rewards, rejected_rewards, metrics)
