"""What every objective receives and returns, and the pieces objectives share.

Losses are pure functions of log-probs: they never see token ids, models or batches. The module computes
`PairLogps` for the policy (and, when the loss needs one, for the reference) and hands them to the
configured `Objective`. Notation used in every loss file, for P pairs:

    π_c, π_r      [P] summed log-probs of the chosen / rejected response under the policy
    ref_c, ref_r  [P] the same under the reference (0 with `reference=none`: π_ref ≡ 1)
    Δ             = (π_c − ref_c) − (π_r − ref_r)       the implicit-reward margin, per unit β

A ranking objective (`takes_rankings`, e.g. `loss=plackett_luce`) receives `RankingLogps` instead: G rankings of
up to K responses each, a preference pair being a ranking of two.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

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
class RankingLogps:
    """Summed response log-probs of G rankings of at most K responses each, under one model.

    logps: [G, K] fp32 summed log-probs of each ranking's responses (0 in padding slots).
    num_tokens: [G, K] response tokens summed (0 in padding slots).
    ranks: [G, K] int64 competition ranks from the labels: 0 = best, tied responses share a rank
        (`data/rankings.py`); −1 marks a padding slot of a ranking with fewer than K responses.
    """

    logps: torch.Tensor
    num_tokens: torch.Tensor
    ranks: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """[G, K] bool: the slots that hold a response."""
        return self.ranks >= 0

    @classmethod
    def from_sequences(
        cls, logps: torch.Tensor, num_tokens: torch.Tensor, ranks: torch.Tensor, groups: torch.Tensor
    ) -> RankingLogps:
        """[S] per-sequence values, their [S] ranks and [S] ranking index (any order) → [G, K] rankings, each
        ranking's responses in sequence order, K = the largest ranking."""
        num_groups = int(groups.max()) + 1 if groups.numel() else 0
        sizes = torch.bincount(groups, minlength=num_groups)  # [G]
        order = torch.argsort(groups, stable=True)  # [S] sequences grouped by ranking
        starts = sizes.cumsum(0) - sizes  # [G] first position of each ranking in `order`
        slots = torch.empty_like(groups)
        slots[order] = torch.arange(len(groups), device=groups.device) - starts[groups[order]]  # [S] slot in ranking
        shape = (num_groups, int(sizes.max()) if num_groups else 0)

        def scatter(values: torch.Tensor, fill: float | int) -> torch.Tensor:
            out = torch.full(shape, fill, dtype=values.dtype, device=values.device)
            return out.index_put((groups, slots), values)

        return cls(scatter(logps, 0), scatter(num_tokens, 0), scatter(ranks, -1))


@dataclass(frozen=True)
class LossOutput:
    """Per-pair losses plus what gets logged.

    losses: [P] — the training objective is `losses.mean()`.
    chosen_rewards, rejected_rewards: [P] detached rewards the objective implies (DPO: β·(log π − log π_ref)),
        or None where it defines none (e.g. SFT); a ranking objective's P reward pairs need not match its losses.
    metrics: extra scalar terms the objective wants logged, under their own names.
    reward_mask: [P] bool: which of the P reward pairs the reward metrics count (None: all). Lets an objective log
        a data-dependent set of pairs without a host sync (e.g. `loss=plackett_luce`: the label-ordered ones).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor | None = None
    rejected_rewards: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    reward_mask: torch.Tensor | None = None

    def num_reward_pairs(self) -> torch.Tensor:
        """0-dim int64 on the losses' device, no host sync: the pairs the reward metrics count (Σ reward_mask, or
        P without a mask; 0 without rewards)."""
        if self.reward_mask is not None:
            return self.reward_mask.sum()
        pairs = 0 if self.chosen_rewards is None else self.chosen_rewards.numel()
        return torch.full((), pairs, dtype=torch.long, device=self.losses.device)  # a fill: no host-to-device copy


class Objective(ABC):
    """A configured loss: binds hyperparameters (checked at config time) to a pure loss function.

    `needs_reference`: the module builds and runs a reference model only when true.
    `reference_free_ok`: the loss also makes sense with `reference=none` (π_ref ≡ 1), as the reference
    implementation allows for its DPO-family losses.
    `takes_rankings`: the objective is called with `RankingLogps` (whole rankings; a pair is a ranking of two)
    rather than `PairLogps`.
    `needs_tokens`: the objective reads per-token log-probs (`PairLogps.tokens`), which only batches of pairs give.
    An objective with running state updates it in `observe`, which the module calls for training batches only;
    `__call__` only reads it.
    """

    name: str = ""
    needs_reference: bool = True
    reference_free_ok: bool = False
    takes_rankings: bool = False
    needs_tokens: bool = False

    @abstractmethod
    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        """Losses and metrics for one batch; `reference` is None when `needs_reference` is false (both are
        `RankingLogps` for an objective that `takes_rankings`). Pure: it never changes the objective's state."""

    def observe(self, policy: PairLogps, reference: PairLogps | None) -> None:  # noqa: B027 (most keep no state)
        """Update the objective's running state (e.g. BCO's reward shift δ) with one training batch, before its
        loss is computed. The module calls it for real training batches only: never in validation and never for
        a placeholder batch (streaming). Objectives without state keep this no-op."""


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


@dataclass
class MarginObjective(Objective):
    """An objective of the margin Δ alone, `margin_loss(Δ, β, *hyperparameters)`, logging the DPO rewards.

    A subclass sets `name`, `reference_free_ok`, `margin_loss` (its file's pure loss function of the [P] margins)
    and `loss_args`: the names of its own hyperparameter fields that `margin_loss` takes after β, in that order.
    A subclass with hyperparameters checks them in `__post_init__` after calling this one (which checks β).

    beta: temperature β > 0 (the top-level `beta`).
    """

    beta: float
    margin_loss: ClassVar[Callable[..., torch.Tensor]]
    loss_args: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_beta(self.beta)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen, rejected = logratios(policy, reference)
        hyperparameters = (getattr(self, key) for key in self.loss_args)
        losses = type(self).margin_loss(chosen - rejected, self.beta, *hyperparameters)
        return LossOutput(losses, *dpo_rewards(policy, reference, self.beta))


@dataclass
class LabelSmoothedMarginObjective(MarginObjective):
    """A `MarginObjective` whose loss also takes a label-flip probability ε ∈ [0, 0.5) (0: DPO).

    label_smoothing: ε, `loss.label_smoothing`.
    """

    label_smoothing: float = 0.1
    loss_args: ClassVar[tuple[str, ...]] = ("label_smoothing",)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("label_smoothing", self.label_smoothing, 0.0, 0.5)


@dataclass
class TwoTermObjective(Objective):
    """An objective that scores the chosen and the rejected response each on its own: a chosen term plus a rejected
    term, `loss_terms(π_c − ref_c, π_r − ref_r, β) → (losses, chosen_losses, rejected_losses)`.

    Logs the DPO rewards and the batch means of the two terms as `chosen_loss` and `rejected_loss`. A subclass sets
    `name` and `loss_terms` (its file's pure loss function).

    beta: temperature β > 0 (the top-level `beta`).
    """

    beta: float
    loss_terms: ClassVar[Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]

    def __post_init__(self) -> None:
        check_beta(self.beta)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        losses, chosen_losses, rejected_losses = type(self).loss_terms(*logratios(policy, reference), self.beta)
        metrics = {"chosen_loss": chosen_losses.detach().mean(), "rejected_loss": rejected_losses.detach().mean()}
        return LossOutput(losses, *dpo_rewards(policy, reference, self.beta), metrics)
