"""`loss=unlikelihood`: the DPO paper's Unlikelihood baseline (Rafailov et al. 2023, arXiv 2305.18290, §6),
built on unlikelihood training (Welleck, Kulikov, Roller, Dinan, Cho and Weston 2019, "Neural Text Generation
with Unlikelihood Training", arXiv 1908.04319).

Maximum likelihood on the chosen response plus, on every token of the rejected response, the token-level
unlikelihood term −log(1 − π(y_l,t | x, y_l,<t)), which pushes that token's probability towards 0 ("an optional
coefficient α ∈ [0, 1] on the unlikelihood term", DPO paper §6). No reference model is built or run.

Sources: the DPO paper defines the baseline in words; the token-level term and its clamp 1 − p ≥ 1e-5 are
Welleck et al.'s token-level unlikelihood loss (as in their released code), with the rejected response's own
tokens as the negative candidates. Both terms are summed over tokens, as the DPO reference implementation sums the
SFT likelihood (`loss=sft`); the batch loss is the mean over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dpo_lightning.losses.base import LossOutput, Objective, PairLogps, TokenLogps, check_range

# Welleck et al.'s floor on 1 − p: a rejected token the model is (almost) sure of costs at most −log 1e-5 ≈ 11.5.
MIN_ONE_MINUS_P = 1e-5


def unlikelihood_loss(
    policy_chosen_logps: torch.Tensor,
    token_logps: torch.Tensor,
    token_seqs: torch.Tensor,
    num_pairs: int,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Unlikelihood loss for a batch of P preference pairs.

        L_like   = −log π(y_w|x) = −Σ_t log π(y_w,t | x, y_w,<t)
        L_unlike = −Σ_t log max(1 − π(y_l,t | x, y_l,<t), 1e-5)
        loss     = L_like + α · L_unlike

    Args:
        policy_chosen_logps: [P] summed log-probs of the chosen responses under the policy.
        token_logps: [N] per-token log-probs of all 2P responses (`TokenLogps.logps`).
        token_seqs: [N] each token's sequence: pair k's chosen response is k, its rejected one P + k.
        num_pairs: P.
        alpha: α ∈ [0, 1], the weight of the unlikelihood term (α = 0: SFT on the chosen responses).

    Returns:
        losses: [P] fp32 per-pair losses.
        likelihood, unlikelihood: [P] detached L_like and L_unlike.
    """
    rejected = token_seqs >= num_pairs  # [N] tokens of rejected responses
    one_minus_p = -torch.expm1(token_logps[rejected].float())  # [N_r] 1 − p, exact for p near 0
    token_terms = -torch.log(one_minus_p.clamp(min=MIN_ONE_MINUS_P))  # [N_r]
    zeros = torch.zeros(num_pairs, dtype=token_terms.dtype, device=token_terms.device)
    unlikelihood = zeros.index_add(0, token_seqs[rejected] - num_pairs, token_terms)  # [P]
    likelihood = -policy_chosen_logps.float()  # [P]
    losses = likelihood + alpha * unlikelihood  # [P]
    return losses, likelihood.detach(), unlikelihood.detach()


def require_tokens(policy: PairLogps, loss_name: str) -> TokenLogps:
    """The policy's per-token log-probs, or a ValueError saying that this loss needs them."""
    if policy.tokens is None:
        raise ValueError(
            f"loss={loss_name} needs per-token policy log-probs (PairLogps.tokens), but the policy's are None"
        )
    return policy.tokens


@dataclass
class Unlikelihood(Objective):
    """`loss=unlikelihood`: needs no reference model and defines no rewards.

    alpha: α ∈ [0, 1], weight of the unlikelihood term on the rejected response's tokens.

    Logged terms: `nll_loss` = mean L_like, `unlikelihood_loss` = mean L_unlike (both summed over tokens).
    """

    alpha: float = 1.0
    name: ClassVar[str] = "unlikelihood"
    needs_reference: ClassVar[bool] = False
    needs_tokens: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_range("alpha", self.alpha, 0.0, 1.0, high_inclusive=True)

    def __call__(self, policy: PairLogps, reference: PairLogps | None) -> LossOutput:
        tokens = require_tokens(policy, self.name)
        losses, likelihood, unlikelihood = unlikelihood_loss(
            policy.chosen, tokens.logps, tokens.seqs, len(policy.chosen), self.alpha
        )
        return LossOutput(losses, metrics={"nll_loss": likelihood.mean(), "unlikelihood_loss": unlikelihood.mean()})
