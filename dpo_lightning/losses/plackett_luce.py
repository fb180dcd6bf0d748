"""`loss=plackett_luce`: DPO on whole rankings of K responses under the Plackett–Luce model (Rafailov et al. 2023,
"Direct Preference Optimization", Appendix A.3).

The Plackett–Luce model draws a ranking best first: at each place, one of the responses not placed yet, with
probability proportional to exp(reward). With DPO's implicit reward r̂(x, y) = β·log π(y|x)/π_ref(y|x), the
negative log-likelihood of the labelled order τ (τ(1) the best response) is

    loss = −log ∏_{k=1..K} exp(r̂(x, y_τ(k))) / Σ_{j=k..K} exp(r̂(x, y_τ(j)))

one softmax cross-entropy per place. At K = 2 it is DPO exactly: −[r_w − log(e^{r_w} + e^{r_l})] − [r_l − r_l]
= −log σ(r_w − r_l). The loss trains on each ranking as a whole: the batch loss is the mean over rankings, not
over preference pairs.

Ties (the data's tie policy, `data/rankings.py`): tied responses are unordered. The exact likelihood of a ranking
with ties is the sum of the probability above over every order of each tied group. It factorises into one factor
per group G (d responses) with risk set R (the responses not ranked above G): the probability that the next d
draws from R are G's members, in any order. The bottom group (the largest rank, tied or single) has R = G and
factor 1: it contributes nothing. A group above it, with S_A = Σ_{j ∈ A} e^{r_j} and l_k the number of k's tied
peers in earlier slots (0 ≤ l_k < d), adds for each member k (`ties`):

    efron (default)  term_k = r_k − log(S_R − (l_k/d)·S_G)      the l-th draw's denominator at its mean over G's orders
    breslow          term_k = r_k − log S_R                     every member drawn from the whole risk set R

A single response (d = 1, l_k = 0) gets the plain Plackett–Luce term from either. As 1/∏ denominators is convex,
a tied group's exact factor / d! ≥ its Efron factor > its Breslow factor: both rules leave out the d! orders, a
constant Σ log d! in the loss that no gradient sees.

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

TIES = ("efron", "breslow")  # the rules for a tied group above the bottom one (`loss.ties`)


def plackett_luce_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    ranks: torch.Tensor,
    beta: float,
    top_m: int | None = None,
    ties: str = "efron",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Plackett–Luce DPO loss for a batch of G rankings of at most K responses each.

        r_k     = β · (log π(y_k|x) − log π_ref(y_k|x))              implicit reward of response k
        R(k)    = {j valid : rank_j ≥ rank_k}                        responses not ranked above k (risk set)
        T(k)    = {j valid : rank_j = rank_k},  d_k = |T(k)|         k's tied group, k included
        l_k     = |{j ∈ T(k) : j < k}|                               k's peers in earlier slots (0 with breslow)
        term_k  = r_k − lse_{R(k)} r − log1p(−(l_k/d_k)·exp(lse_{T(k)} r − lse_{R(k)} r))
                = r_k − log(S_R − (l_k/d_k)·S_T)                     Efron; l_k = 0: Breslow, and no tie
        loss    = −Σ_{k valid, rank_k < m, k not in the bottom group} term_k      (no m when top_m is None)

    The bottom group is the valid responses of the largest rank. log1p's argument is ≥ 1/d_k − 1 > −1 (S_T ≤ S_R,
    l_k < d_k), so no NaN with ties of any size. A padding slot's reward is set to 0 and its R(k), T(k) to {k},
    so its term is 0 − 0 and nothing flows into or out of it (no NaN from an empty logsumexp).

    Args:
        policy_logps: [G, K] summed log-probs of each ranking's responses under the policy (any value in padding).
        reference_logps: [G, K] same under the reference (zeros with `reference=none`).
        ranks: [G, K] competition ranks, 0 = best, tied responses share a rank, −1 = padding slot.
        beta: temperature β of the implicit reward, as in DPO.
        top_m: keep the terms of responses with rank < m only (None: all; m ≥ K: all).
        ties: "efron" or "breslow", the rule for a tied group above the bottom one.

    Returns:
        losses: [G] fp32 per-ranking losses (the batch loss is their mean over rankings).
        rewards: [G, K] detached implicit rewards β·(log π − log π_ref), 0 in padding slots.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    valid = ranks >= 0  # [G, K]
    rewards = torch.where(valid, beta * (policy_logps.float() - reference_logps.float()), 0.0)  # [G, K] r
    # [g, k, j]: j ∈ R(k) / T(k) of ranking g; a padding slot k gets R(k) = T(k) = {k}
    same_slot = torch.eye(ranks.shape[-1], dtype=torch.bool, device=ranks.device)  # [K, K]
    both_valid = valid[:, :, None] & valid[:, None, :]  # [G, K, K]
    risk = (both_valid & (ranks[:, None, :] >= ranks[:, :, None])) | same_slot  # [G, K, K]
    log_risk = torch.logsumexp(rewards[:, None, :].masked_fill(~risk, float("-inf")), dim=-1)  # [G, K] log S_R
    terms = rewards - log_risk  # [G, K] Breslow's term_k, 0 in padding slots
    if ties == "efron":
        tied = (both_valid & (ranks[:, None, :] == ranks[:, :, None])) | same_slot  # [G, K, K]
        earlier = torch.ones_like(same_slot).tril(-1)  # [K, K] j < k
        share = (tied & earlier).sum(dim=-1) / tied.sum(dim=-1)  # [G, K] l_k / d_k in [0, 1), 0 in padding
        log_tied = torch.logsumexp(rewards[:, None, :].masked_fill(~tied, float("-inf")), dim=-1)  # [G, K] log S_T
        terms = terms - torch.log1p(-share * torch.exp(log_tied - log_risk))  # [G, K] Efron's term_k
    dropped = valid & (ranks == ranks.amax(dim=-1, keepdim=True))  # [G, K] the bottom group (factor 1)
    if top_m is not None:
        dropped = dropped | (ranks >= top_m)  # keep rank < m only (padding's −1 keeps its 0)
    return -terms.masked_fill(dropped, 0.0).sum(dim=-1), rewards.detach()


@dataclass
class PlackettLuce(Objective):
    """`loss=plackett_luce`: trains on whole rankings (`RankingLogps`; a preference pair is a ranking of two, where
    this is DPO). Also runs with `reference=none` (log π_ref ≡ 0).

    Logs the DPO rewards of every label-ordered pair of each ranking (better, worse: rank_better < rank_worse;
    tied responses never pair), so `rewards/*` are the pairwise metrics over all the rankings' pairs. Without a
    host sync: the rewards of all G·K·K slot pairs, with `reward_mask` marking the label-ordered ones.

    beta: temperature β > 0 (the top-level `beta`).
    top_m: None, or keep the terms of the top m ranks only (m ≥ 1; 1: best-of-K softmax loss).
    ties: "efron" (default) or "breslow", the rule for a tied group above the bottom one.
    """

    beta: float
    top_m: int | None = None
    ties: str = "efron"
    name: ClassVar[str] = "plackett_luce"
    reference_free_ok: ClassVar[bool] = True
    takes_rankings: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_beta(self.beta)
        if self.top_m is not None and (type(self.top_m) is not int or self.top_m < 1):
            raise ConfigError("loss.top_m", f"must be null or an integer ≥ 1, got {self.top_m!r}")
        if self.ties not in TIES:
            raise ConfigError("loss.ties", f"must be one of {', '.join(TIES)}, got {self.ties!r}")

    def __call__(self, policy: RankingLogps, reference: RankingLogps | None) -> LossOutput:
        reference_logps = torch.zeros_like(policy.logps) if reference is None else reference.logps
        losses, rewards = plackett_luce_loss(
            policy.logps, reference_logps, policy.ranks, self.beta, self.top_m, self.ties
        )  # [G], [G, K]
        slots = policy.ranks.shape[-1]
        chosen = rewards[:, :, None].expand(-1, -1, slots).flatten()  # [G·K·K] r[g, i] of slot pair (g, i, j)
        rejected = rewards[:, None, :].expand(-1, slots, -1).flatten()  # [G·K·K] r[g, j]
        # label-ordered: rank_i < rank_j with i valid (so j is valid too: padding's rank is −1)
        ordered = policy.valid[:, :, None] & (policy.ranks[:, :, None] < policy.ranks[:, None, :])  # [G, K, K]
        return LossOutput(losses, chosen, rejected, reward_mask=ordered.flatten())
