"""What every objective receives and returns.

Losses are pure functions of per-sequence log-probs: they never see token ids, models or batches.
The module computes `PairLogps` for the policy (and, when the loss needs one, for the reference) and
hands them to the configured `Objective`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class PairLogps:
    """Summed response log-probs of P preference pairs under one model.

    chosen, rejected: [P] fp32, sum over response tokens of log p(token | prefix).
    chosen_tokens, rejected_tokens: [P] number of response tokens summed (for length-normalised losses).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


@dataclass(frozen=True)
class LossOutput:
    """Per-pair losses plus what gets logged.

    losses: [P] — the training objective is `losses.mean()`.
    chosen_rewards, rejected_rewards: [P] detached implicit rewards β·(log π − log π_ref), or None where the
        objective defines no reward (e.g. SFT).
    metrics: extra scalar terms the objective wants logged, under their own names.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor | None = None
    rejected_rewards: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(ABC):
    """A configured loss: binds hyperparameters to a pure loss function.

    Subclasses set `needs_reference` and implement `__call__`. The module builds and runs a reference model
    only when `needs_reference` is true.
    """

    needs_reference: bool = True

    @abstractmethod
    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        """Losses and metrics for one batch; `reference` is None when `needs_reference` is false."""
