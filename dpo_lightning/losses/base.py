"""What every objective receives and returns, and the pieces objectives share.

Losses are pure functions of log-probs: they never see token ids, models or batches. The module computes
`PairLogps` for the policy (and, when the loss needs one, for the reference) and hands them to the
configured `Objective`. Notation used in every loss file, for P pairs:

    π_c, π_r      [P] summed log-probs of the chosen / rejected response under the policy
    ref_c, ref_r  [P] the same under the reference (0 with `reference=none`: π_ref ≡ 1)
    Δ             = (π_c − ref_c) − (π_r − ref_r)       the implicit-reward margin, per unit β
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from dpo_lightning.errors import ConfigError


@dataclass(frozen=True)
class TokenLogps:
    """Per-token response log-probs of the 2P sequences of a batch (for token-level objectives).

    logps: [N] fp32 log p(token | prefix) of every response token.
    seqs: [N] the sequence each token belongs to: pair k's chosen response is k, its rejected one P + k.
    """

    logps: torch.Tensor
    seqs: torch.Tensor


@dataclass(frozen=True)
class PairLogps:
    """Summed response log-probs of P preference pairs under one model.

    chosen, rejected: [P] fp32, sum over response tokens of log p(token | prefix).
    chosen_tokens, rejected_tokens: [P] number of response tokens summed (for length-normalised losses).
    tokens: the per-token log-probs behind the sums (policy only; None for the reference).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    tokens: TokenLogps | None = None

    def mean_per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[P], [P]: chosen and rejected log-probs divided by their response lengths."""
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass(frozen=True)
class LossOutput:
    """Per-pair losses plus what gets logged.

    losses: [P] — the training objective is `losses.mean()`.
    chosen_rewards, rejected_rewards: [P] detached rewards the objective implies (DPO: β·(log π − log π_ref)),
        or None where it defines none (e.g. SFT).
    metrics: extra scalar terms the objective wants logged, under their own names.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor | None = None
    rejected_rewards: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(ABC):
    """A configured loss: binds hyperparameters (checked at config time) to a pure loss function.

    `needs_reference`: the module builds and runs a reference model only when true.
    `reference_free_ok`: the loss also makes sense with `reference=none` (π_ref ≡ 1), as the reference
    implementation allows for its DPO-family losses.
    """

    name: str = ""
    needs_reference: bool = True
    reference_free_ok: bool = False

    @abstractmethod
    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        """Losses and metrics for one batch; `reference` is None when `needs_reference` is false."""


def logratios(policy: PairLogps, reference: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """[P], [P] fp32: π_c − ref_c and π_r − ref_r."""
    return policy.chosen.float() - reference.chosen.float(), policy.rejected.float() - reference.rejected.float()


def dpo_rewards(policy: PairLogps, reference: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[P], [P] detached implicit DPO rewards β·(log π − log π_ref) of chosen and rejected responses."""
    chosen, rejected = logratios(policy, reference)
    return beta * chosen.detach(), beta * rejected.detach()


def check_beta(beta: float) -> float:
    """β, or a ConfigError naming the top-level `beta` key unless β > 0."""
    if not beta > 0:
        raise ConfigError("beta", f"must be > 0, got {beta}")
    return beta


def check_range(key: str, value: float, low: float, high: float, high_inclusive: bool = False) -> float:
    """`value` if low ≤ value < high (≤ high if `high_inclusive`), else a ConfigError naming `loss.<key>`."""
    if not (low <= value <= high if high_inclusive else low <= value < high):
        bracket = "]" if high_inclusive else ")"
        raise ConfigError(f"loss.{key}", f"must be in [{low}, {high}{bracket}, got {value}")
    return value
