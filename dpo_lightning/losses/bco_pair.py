"""`loss=bco_pair`: BCO, binary classifier optimisation, on preference pairs (Jung et al. 2024, "Binary Classifier
Optimization for Large Language Model Alignment", arXiv 2404.04656).

BCO trains the implicit reward r = β·(π − ref) as the logit of a binary classifier: chosen responses are the
positive class, rejected ones the negative class. A reward shift δ, the running mean of the rewards, centres the
logits so that the classifier's threshold follows the rewards as they drift:

    loss = −log σ(r_c − δ) − log σ(−(r_r − δ))

δ enters as a constant (no gradient flows through it).

Sources: Hugging Face TRL's `DPOTrainer.dpo_loss` with `loss_type="bco_pair"` for the loss and for δ: after each
batch's rewards are computed, TRL feeds the batch mean of all 2P rewards to a `RunningMoments` and uses its mean,
i.e. δ is the plain average of the batch means seen so far, the current batch included. Differences from TRL:
- δ is updated by training batches only (`observe`, which the module calls before the loss of each real training
  batch); validation uses δ without changing it, and a placeholder batch (a rank out of streaming data) never
  reaches it. TRL updates it in evaluation too, which makes training depend on how often and on what one
  validates (and on Lightning's sanity-check batches).
- δ is per process: under DDP each rank averages its own batches. TRL's `RunningMoments` averages across
  processes (an all-reduce inside the loss); the ranks' δ differ only by sampling noise, and a collective in the
  loss would cost a synchronisation every step.
- δ is not saved in checkpoints: a resumed run restarts it from its first batch.
The paper defines δ likewise, as a moving average of the chosen and rejected rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps, check_beta, dpo_rewards, logratios


def bco_pair_loss(
    chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float, delta: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairwise BCO loss for a batch of P preference pairs.

        r_c  = β·(π_c − ref_c),  r_r = β·(π_r − ref_r)
        loss = −log σ(r_c − δ) − log σ(−(r_r − δ))

    Args:
        chosen_logratios: [P] π_c − ref_c, summed log-prob ratios of the chosen responses.
        rejected_logratios: [P] π_r − ref_r, the same for the rejected responses.
        beta: temperature β > 0 of the rewards.
        delta: the reward shift δ, a constant (0-dim tensor or float), in reward units.

    Returns:
        losses: [P] fp32 per-pair losses, the sum of the two terms below.
        chosen_losses: [P] −log σ(r_c − δ): the chosen response classified as positive.
        rejected_losses: [P] −log σ(δ − r_r): the rejected response classified as negative.
    """
    chosen_losses = -F.logsigmoid(beta * chosen_logratios.float() - delta)  # [P]
    rejected_losses = -F.logsigmoid(-(beta * rejected_logratios.float() - delta))  # [P]
    return chosen_losses + rejected_losses, chosen_losses, rejected_losses


@dataclass
class BCOPair(Objective):
    """`loss=bco_pair` (also a part of `loss=combo`'s MPO default). beta: temperature β > 0 of the rewards (paper:
    0.01).

    State: δ, the running mean of the training batches' mean reward (see the module docstring), 0 before the
    first training batch; `observe` updates it, the loss reads it. Logged terms: `delta` (δ as used for the batch),
    `chosen_loss`, `rejected_loss`.
    """

    beta: float
    name: ClassVar[str] = "bco_pair"
    _delta: torch.Tensor | None = field(default=None, init=False, repr=False)
    _batches: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        check_beta(self.beta)

    def observe(self, policy: PairLogps, reference: PairLogps | None) -> None:
        """Add a training batch's mean reward (over its 2P rewards) to δ, the running mean of batch means."""
        chosen_rewards, rejected_rewards = dpo_rewards(policy, reference, self.beta)  # [P], [P] detached
        batch_mean = torch.cat((chosen_rewards, rejected_rewards)).float().mean()  # 0-dim
        self._batches += 1
        previous = batch_mean if self._delta is None else self._delta.to(batch_mean.device)
        self._delta = previous + (batch_mean - previous) / self._batches

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        chosen_rewards, rejected_rewards = dpo_rewards(policy, reference, self.beta)  # [P], [P] detached
        delta = chosen_rewards.new_zeros((), dtype=torch.float32) if self._delta is None else self._delta
        delta = delta.to(chosen_rewards.device)
        losses, chosen_losses, rejected_losses = bco_pair_loss(*logratios(policy, reference), self.beta, delta)
        metrics = {
            "delta": delta.clone(),
            "chosen_loss": chosen_losses.detach().mean(),
            "rejected_loss": rejected_losses.detach().mean(),
        }
        return LossOutput(losses, chosen_rewards, rejected_rewards, metrics)
