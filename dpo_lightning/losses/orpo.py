"""`loss=orpo`: ORPO, Odds Ratio Preference Optimization (Hong, Lee and Thorne 2024, "ORPO: Monolithic Preference
Optimization without Reference Model", arXiv 2403.07691).

Supervised fine-tuning on the chosen response plus a penalty on the odds ratio of rejected over chosen, in
one stage and with no reference model. Both terms use the paper's length-normalised likelihood
P(y|x) = exp(log π(y|x)/|y|) (paper §4.1; TRL's `average_log_prob=True`).

Sources: paper eqs. 4–7; the log-odds difference, the rewards λ·log π(y|x)/|y| and the logged metric names
follow Hugging Face TRL's `ORPOTrainer.odds_ratio_loss` (where `beta` is this λ). Two differences from TRL:
TRL's NLL averages over every chosen token of the batch (recent versions: prompt tokens too), here each pair's
NLL is its response's per-token mean and the batch loss averages pairs; and log(1 − p) is computed as
log(−expm1(log p)) (TRL: log1p(−exp(log p)), which loses all precision as p → 1), with p capped at 1 − 1e-7
so that a response the model is certain of (fp32 log-prob exactly 0) gives a finite loss and gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses.base import LossOutput, Objective, PairLogps

# log p ≤ log(1 − 1e-7) inside log(1 − p): keeps log-odds ≤ ~16.1 and their gradient finite.
MAX_MEAN_LOGP = -1e-7


def log_odds(mean_logps: torch.Tensor) -> torch.Tensor:
    """[P] log(p / (1 − p)) from [P] log p, with p = exp(mean_logps) < 1."""
    return mean_logps - torch.log(-torch.expm1(mean_logps.clamp(max=MAX_MEAN_LOGP)))


def orpo_loss(
    policy_chosen_mean_logps: torch.Tensor,
    policy_rejected_mean_logps: torch.Tensor,
    odds_ratio_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ORPO loss for a batch of P preference pairs.

        log p̄(y)   = log π(y|x) / |y|                          per-token mean log-prob
        odds(y)    = p̄(y) / (1 − p̄(y))
        L_SFT      = −log p̄(y_w)
        L_OR       = −log σ(log odds(y_w) − log odds(y_l))
        loss       = L_SFT + λ · L_OR                          (paper eq. 6)

    Args:
        policy_chosen_mean_logps: [P] per-token mean log-probs of the chosen responses under the policy.
        policy_rejected_mean_logps: [P] same for the rejected responses.
        odds_ratio_weight: λ ≥ 0, the weight of the odds-ratio term (paper: 0.1; λ = 0 is SFT).

    Returns:
        losses: [P] fp32 per-pair losses.
        chosen_rewards, rejected_rewards: [P] detached rewards λ·log p̄(y) (as TRL).
        nll: [P] detached L_SFT.
        log_odds_ratio: [P] detached log odds(y_w) − log odds(y_l).
    """
    chosen, rejected = policy_chosen_mean_logps.float(), policy_rejected_mean_logps.float()  # [P], [P]
    log_odds_ratio = log_odds(chosen) - log_odds(rejected)  # [P]
    nll = -chosen  # [P]
    losses = nll - odds_ratio_weight * F.logsigmoid(log_odds_ratio)  # [P]
    return (
        losses,
        odds_ratio_weight * chosen.detach(),
        odds_ratio_weight * rejected.detach(),
        nll.detach(),
        log_odds_ratio.detach(),
    )


@dataclass
class ORPO(Objective):
    """`loss=orpo`: needs no reference model (and ignores the top-level `beta`).

    odds_ratio_weight: λ ≥ 0, weight of the odds-ratio penalty (paper: 0.1; TRL's `ORPOConfig.beta`).

    Logged terms (TRL's names): `nll_loss` = mean L_SFT; `log_odds_ratio` = mean log σ(log odds(y_w) −
    log odds(y_l)) (= −L_OR); `log_odds_chosen` = mean log odds(y_w) − log odds(y_l).
    """

    odds_ratio_weight: float = 0.1
    name: ClassVar[str] = "orpo"
    needs_reference: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if not self.odds_ratio_weight >= 0:
            raise ConfigError("loss.odds_ratio_weight", f"must be ≥ 0, got {self.odds_ratio_weight}")

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        losses, chosen_rewards, rejected_rewards, nll, log_odds_ratio = orpo_loss(
            *policy.mean_per_token(), self.odds_ratio_weight
        )
        metrics = {
            "nll_loss": nll.mean(),
            "log_odds_ratio": F.logsigmoid(log_odds_ratio).mean(),
            "log_odds_chosen": log_odds_ratio.mean(),
        }
        return LossOutput(losses, chosen_rewards, rejected_rewards, metrics)
