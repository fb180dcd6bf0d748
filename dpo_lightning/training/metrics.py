"""Batch metrics logged under `train/` and `val/` (names as in the reference implementation and TRL).

Every metric is a mean, and says what over: a `Mean` holds the batch's value and its count — the pairs, reward
pairs, rankings or examples it averages. Training logs the values; validation reports Σ value·count / Σ count over
the whole validation set (and every rank), so each metric is its mean over all of what it averages, however the
batches divide it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from dpo_lightning.losses.base import LossOutput, PairLogps, RankingLogps


class Mean(NamedTuple):
    """One batch metric: `value`, a mean over `count` things (a 0-dim tensor or an int; 0: nothing to average)."""

    value: torch.Tensor
    count: torch.Tensor | int


class MetricTotals:
    """Σ value × count and Σ count per metric over a validation epoch; `means` adds them over ranks, so each rank
    weighs what its data weighs (one with fewer examples, or only placeholder batches, included — a mean of per-rank
    means would not be)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # name → [Σ metric × count, Σ count]

    def add(self, metrics: dict[str, Mean], counted: bool, device: torch.device) -> None:
        """Add a batch's metrics (a metric with count 0, or every metric of a batch not `counted` — a placeholder
        — adds zeros: its rank still reports every metric's total)."""
        for name, (value, count) in metrics.items():
            total = self.sums.setdefault(name, torch.zeros(2, device=device))
            count = torch.as_tensor(count if counted else 0, dtype=torch.float32, device=device)
            weighted = torch.where(count > 0, value.detach().float() * count, 0.0)  # a mean over nothing adds 0
            self.sums[name] = total + torch.stack([weighted, count])

    def means(self, strategy: Any) -> dict[str, torch.Tensor]:
        """Each metric's mean over every rank's examples (a collective: `strategy.reduce`); a count of 0 (a metric
        defined nowhere, e.g. Kendall's τ while policy = reference) gives 0, not 0/0."""
        names = sorted(self.sums)
        if not names:
            return {}
        totals = strategy.reduce(torch.stack([self.sums[n] for n in names]), reduce_op="sum")
        return {name: totals[i, 0] / totals[i, 1].clamp(min=1) for i, name in enumerate(names)}


def preference_metrics(output: LossOutput, policy: PairLogps) -> dict[str, Mean]:
    """Scalar metrics of one batch: loss, implicit-reward statistics (where the objective defines rewards),
    mean policy log-probs, and the objective's own terms.

    Counts: `loss` and the objective's terms average the examples its losses are over (pairs, or a ranking
    objective's rankings); `logps/*` the P pairs of `policy`; `rewards/*` the reward pairs the objective logs
    (`LossOutput.num_reward_pairs`: a ranking objective's label-ordered pairs, whatever pairs `policy` holds).

    The `rewards/*` are means over the reward pairs that `output.reward_mask` w counts (all P without a mask), of
    the [P] chosen and rejected rewards c and r: chosen Σ w·c / Σ w, rejected Σ w·r / Σ w, accuracies
    Σ w·[c > r] / Σ w, margins Σ w·(c − r) / Σ w. Masked-out pairs are dropped with `where` (a NaN there stays out),
    and nothing here syncs with the host."""
    examples, pairs = output.losses.numel(), policy.chosen.numel()
    metrics = {
        "loss": Mean(output.losses.mean(), examples),
        "logps/chosen": Mean(policy.chosen.detach().mean(), pairs),
        "logps/rejected": Mean(policy.rejected.detach().mean(), pairs),
    }
    chosen, rejected, mask = output.chosen_rewards, output.rejected_rewards, output.reward_mask
    if chosen is not None and rejected is not None:
        reward_pairs = output.num_reward_pairs()

        def mean(values: torch.Tensor) -> Mean:
            value = values.mean() if mask is None else torch.where(mask, values, 0.0).sum() / mask.sum()
            return Mean(value, reward_pairs)

        metrics |= {
            "rewards/chosen": mean(chosen),
            "rewards/rejected": mean(rejected),
            "rewards/accuracies": mean((chosen > rejected).float()),
            "rewards/margins": mean(chosen - rejected),
        }
    return metrics | {name: Mean(value, examples) for name, value in output.metrics.items()}


def ranking_metrics(policy: RankingLogps, reference: RankingLogps | None) -> dict[str, Mean]:
    """Scalar metrics of how each ranking's implicit-reward order matches its labels, for G rankings of ≤ K responses.

        s_k     = log π(y_k|x) − log π_ref(y_k|x)     (log π alone when `reference` is None; β-free: both metrics
                                                      depend on the order of s only)
        a_ij    = sign(s_i − s_j),  b_ij = sign(rank_j − rank_i)      for each pair i < j of valid slots
        τ_b     = Σ a_ij·b_ij / sqrt(Σ a_ij² · Σ b_ij²)              Kendall's τ-b: (n_c − n_d) over the geometric
                                                                      mean of the pairs untied in s and in the labels

    "ranking/kendall_tau": τ_b averaged over the rankings where it is defined (s not all tied; labels always have two
        levels), its count; 0 in a batch where it is defined for none (policy = reference at step 0), so logged
        means stay finite.
    "ranking/top1": mean over the G rankings of the share of the highest-scored responses that have rank 0 (1 or 0
        unless scores tie at the top: the chance of a hit when ties are broken at random).
    """
    scores = policy.logps.detach().float()  # [G, K] s
    if reference is not None:
        scores = scores - reference.logps.detach().float()
    ranks, valid = policy.ranks, policy.valid  # [G, K]
    upper = torch.ones(ranks.shape[-1], ranks.shape[-1], dtype=torch.bool, device=ranks.device).triu(1)  # [K, K] i < j
    pairs = valid[:, :, None] & valid[:, None, :] & upper  # [G, K, K] each pair of responses once
    by_score = torch.sign(scores[:, :, None] - scores[:, None, :]) * pairs  # [G, K, K] a_ij, 0 off pairs
    by_label = torch.sign(ranks[:, None, :] - ranks[:, :, None]).float() * pairs  # [G, K, K] b_ij, 0 off pairs
    concordance = (by_score * by_label).sum(dim=(1, 2))  # [G] n_c − n_d
    untied_scores, untied_labels = by_score.abs().sum(dim=(1, 2)), by_label.abs().sum(dim=(1, 2))  # [G], [G] counts
    defined = (untied_scores > 0) & (untied_labels > 0)  # [G]
    tau = concordance / (untied_scores * untied_labels).clamp(min=1).sqrt()  # [G], 0 where undefined
    masked = scores.masked_fill(~valid, float("-inf"))  # [G, K]
    top = masked == masked.amax(dim=-1, keepdim=True)  # [G, K] the highest-scored responses (several on a tie)
    top1 = (top & (ranks == 0)).sum(dim=-1) / top.sum(dim=-1).clamp(min=1)  # [G]
    return {
        "ranking/kendall_tau": Mean(tau.sum() / defined.sum().clamp(min=1), defined.sum()),
        "ranking/top1": Mean(top1.mean(), ranks.shape[0]),
    }
