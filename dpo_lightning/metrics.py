"""Batch metrics logged under `train/` and `val/` (names as in the reference implementation and TRL)."""

from __future__ import annotations

import torch

from dpo_lightning.losses.base import LossOutput, PairLogps


def preference_metrics(output: LossOutput, policy: PairLogps) -> dict[str, torch.Tensor]:
    """Scalar metrics of one batch: loss, implicit-reward statistics (where the objective defines rewards),
    mean policy log-probs, and the objective's own terms."""
    metrics = {
        "loss": output.losses.mean(),
        "logps/chosen": policy.chosen.detach().mean(),
        "logps/rejected": policy.rejected.detach().mean(),
    }
    if output.chosen_rewards is not None and output.rejected_rewards is not None:
        metrics |= {
            "rewards/chosen": output.chosen_rewards.mean(),
            "rewards/rejected": output.rejected_rewards.mean(),
            "rewards/accuracies": (output.chosen_rewards > output.rejected_rewards).float().mean(),
            "rewards/margins": (output.chosen_rewards - output.rejected_rewards).mean(),
        }
    return metrics | output.metrics
