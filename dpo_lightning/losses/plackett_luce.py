"""`loss=plackett_luce`: DPO on whole rankings of K responses under the Plackett–Luce model (Rafailov et al. 2023,
"Direct Preference Optimization", Appendix A.3).

The Plackett–Luce model draws a ranking best first: at each place, one of the responses not placed yet, with
probability proportional to exp(reward). With DPO's implicit reward r̂(x, y) = β·log π(y|x)/π_ref(y|x), the
negative log-likelihood of the labelled order τ (τ(1) the best response) is

    loss = −log ∏_{k=1..K} exp(r̂(x, y_τ(k))) / Σ_{j=k..K} exp(r̂(x, y_τ(j)))

one softmax cross-entropy per place. At K = 2 it is DPO exactly: −[r_w − log(e^{r_w} + e^{r_l})] − [r_l − r_l]
= −log σ(r_w − r_l). The loss trains on each ranking as a whole: the batch loss is the mean over rankings, not
over preference pairs.

Ties (the data's tie policy, `data/rankings.py`): tied responses are unordered, and each member of a tied group
is drawn from every response not ranked above the group, the group included (Breslow's approximation of the
likelihood over the group's orders). With competition ranks that is one rule for every response k:

    risk set R(k) = {j : rank_j ≥ rank_k}          (k and its tied peers included)

`top_m` keeps the terms of the responses ranked in the top m places only (the Plackett–Luce likelihood of a
partial ranking: the first m draws); m = 1 is the softmax loss of picking the best of K. A tied group that starts
inside the top m counts whole, as its members have no order to cut at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.errors import ConfigError
from dpo_lightning.losses.base import LossOutput, Objective, RankingLogps, check_beta


def plackett_luce_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    beta: float,
    top_m: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Plackett–Luce DPO loss for a batch of G rankings of at most K responses each.

        r_k     = β · (log π(y_k|x) − log π_ref(y_k|x))              implicit reward of response k
        R(k)    = {j valid : rank_j ≥ rank_k}                        responses not ranked above k
        term_k  = r_k − logsumexp_{j ∈ R(k)} r_j                     log-prob of drawing k from R(k)
        loss    = −Σ_{k valid, rank_k < m} term_k                    (every valid k when top_m is None)

    Without ties the worst response's R(k) is {k}: its term is exactly 0. A padding slot's reward is set to 0 and
    its R(k) to {k}, so its term is 0 − 0 and nothing flows into or out of it (no NaN from an empty logsumexp).

    Args:
        policy_logps: [G, K] summed log-probs of each ranking's responses under the policy (any value in padding).
        reference_logps: [G, K] same under the reference (zeros with `reference=none`).
        ranks: [G, K] competition ranks, 0 = best, tied responses share a rank, −1 = padding slot.
        beta: temperature β of the implicit reward, as in DPO.
        top_m: keep the terms of responses with rank < m only (None: all; m ≥ K: all).

    Returns:
        losses: [G] fp32 per-ranking losses (the batch loss is their mean over rankings).
        rewards: [G, K] detached implicit rewards β·(log π − log π_ref), 0 in padding slots.
    """
    valid = ranks >= 0  # [G, K]
    rewards = torch.where(valid, beta * (policy_logps.float() - reference_logps.float()), 0.0)  # [G, K] r
    # risk[g, k, j]: response j is in R(k) of ranking g; a padding slot k gets R(k) = {k}
    same_slot = torch.eye(ranks.shape[-1], dtype=torch.bool, device=ranks.device)  # [K, K]
    risk = (valid[:, :, None] & valid[:, None, :] & (ranks[:, None, :] >= ranks[:, :, None])) | same_slot  # [G, K, K]
    candidates = rewards[:, None, :].masked_fill(~risk, float("-inf"))  # [G, K, K] r_j for j ∈ R(k), else −∞
    terms = rewards - torch.logsumexp(candidates, dim=-1)  # [G, K] term_k, 0 in padding slots
    if top_m is not None:
        terms = terms.masked_fill(ranks >= top_m, 0.0)  # keep rank < m (padding's −1 keeps its 0)
    return -terms.sum(dim=-1), rewards.detach()


@dataclass
class PlackettLuce(Objective):
    """`loss=plackett_luce`: trains on whole rankings (`RankingLogps`; a preference pair is a ranking of two, where
    this is DPO). Also runs with `reference=none` (log π_ref ≡ 0).

    Logs the DPO rewards of every label-ordered pair of each ranking (better, worse: rank_better < rank_worse;
    tied responses never pair), so `rewards/*` are the pairwise metrics over all the rankings' pairs.

    beta: temperature β > 0 (the top-level `beta`).
    top_m: None, or keep the terms of the top m ranks only (m ≥ 1; 1: best-of-K softmax loss).
    """

    beta: float
    top_m: int | None = None
    name: ClassVar[str] = "plackett_luce"
    reference_free_ok: ClassVar[bool] = True
    takes_rankings: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_beta(self.beta)
        if self.top_m is not None and (type(self.top_m) is not int or self.top_m < 1):
            raise ConfigError("loss.top_m", f"must be null or an integer ≥ 1, got {self.top_m!r}")

    def __call__(self, policy: RankingLogps, reference: RankingLogps | None) -> LossOutput:
        reference_logps = torch.zeros_like(policy.logps) if reference is None else reference.logps
        losses, rewards = plackett_luce_loss(policy.logps, reference_logps, policy.ranks, self.beta, self.top_m)
        # (g, better, worse) of every pair with rank_better < rank_worse, better valid (so worse is valid too)
        pairs = policy.valid[:, :, None] & (policy.ranks[:, :, None] < policy.ranks[:, None, :])  # [G, K, K]
        groups, better, worse = pairs.nonzero(as_tuple=True)  # [P] each
        return LossOutput(losses, rewards[groups, better], rewards[groups, worse])
