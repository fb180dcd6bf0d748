"""The Bradley–Terry loss of a reward model: the preferred response should get the higher scalar reward.

Not an `Objective` (those are losses of a policy's log-probs): the reward-model trainer
(`training/reward_model.py`) calls this pure function with the rewards its classifier gives each response.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_coefficient: float = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley–Terry loss of P (chosen, rejected) reward pairs, in fp32:

        loss_k = −log σ(r_w − r_l − m_k) + c · (r_w + r_l)²

    where r_w, r_l are pair k's chosen and rejected rewards, m_k its margin (0 without `margin`; Llama 2's
    reward model: how much better the chosen response was rated) and c the `center_coefficient` (Eisenstein et al.
    2023, TRL RewardTrainer's `center_rewards_coefficient`, e.g. 0.01): it keeps the rewards centred on 0, which
    the first term alone leaves free (it sees differences only). TRL adds c · mean_k (r_w + r_l)² to the batch's
    mean loss; here it is per pair, so `losses.mean()` equals TRL's loss. log σ is `F.logsigmoid`: finite for
    any finite difference (log(sigmoid(x)) is −inf below x ≈ −104 in fp32).

    Args:
        chosen_rewards: [P] rewards r_w of the preferred responses.
        rejected_rewards: [P] rewards r_l of the other responses.
        margin: [P] margins m the chosen reward must exceed the rejected one by (None: 0).
        center_coefficient: c ≥ 0, weight of the centring term (0: none).

    Returns:
        losses: [P] fp32 per-pair losses; the training loss is their mean.
    """
    chosen, rejected = chosen_rewards.float(), rejected_rewards.float()  # [P], [P]
    difference = chosen - rejected  # [P]
    if margin is not None:
        difference = difference - margin.float()
    losses = -F.logsigmoid(difference)  # [P]
    if center_coefficient:
        losses = losses + center_coefficient * (chosen + rejected) ** 2
    return losses
