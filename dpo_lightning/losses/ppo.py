"""The pure pieces of PPO (Schulman et al. 2017) in the RLHF recipe of Ziegler et al. 2019 / Stiennon et al. 2020,
the DPO paper's PPO baseline: a KL-penalised per-token reward, GAE, masked whitening, the clipped policy and value
losses, explained variance and the KL-coefficient controllers.

Not `Objective`s (those are losses of a policy's log-probs on fixed preference data): a PPO trainer calls these.

Shapes: B responses, T response-token positions, right-padded. `mask` [B, T] is bool, True on a real response
token; each row's True entries are a prefix of the row, with at least one per row. Every tensor result is fp32
(inputs are cast with `.float()`); values at padded positions never reach a result (they are replaced by 0 before
any arithmetic, so even NaN or inf padding is harmless), and per-token results are 0 there.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _check_mask(mask: torch.Tensor, *tensors: torch.Tensor) -> None:
    """A bool [B, T] mask of the shape of every tensor (cheap: no look at the values)."""
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"mask must be a bool [B, T] tensor, got {mask.dtype} of shape {tuple(mask.shape)}")
    for tensor in tensors:
        if tensor.shape != mask.shape:
            raise ValueError(f"expected a [B, T] = {tuple(mask.shape)} tensor like the mask, got {tuple(tensor.shape)}")


def _check_prefix_mask(mask: torch.Tensor) -> None:
    """Every row's real tokens are a non-empty prefix of it (looks at the values: one device sync)."""
    if mask.shape[1] == 0 or not bool(mask[:, 0].all()):
        raise ValueError("every row of the mask needs at least one real token, at position 0")
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("the mask must be right-padded: each row's True entries a prefix of the row")


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x in fp32 with 0 at the padded positions (`where`, not `x * mask`: NaN · 0 is NaN)."""
    return torch.where(mask, x.float(), 0.0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scalar fp32 mean of x over the entries where `mask` is True: Σ_mask x / Σ mask."""
    _check_mask(mask, x)
    return _masked(x, mask).sum() / mask.sum()


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Scalar fp32 variance of x over the N entries where `mask` is True:

        Σ_mask (x − mean)² / (N − 1)     (unbiased; N / (N − 1) times the biased one, as TRL's `masked_var`)
        Σ_mask (x − mean)² / N           (unbiased=False)

    The unbiased variance of a single entry is 0 / 0 = NaN.
    """
    centred = _masked(x - masked_mean(x, mask), mask)  # [B, T], 0 on padding
    count = mask.sum()
    return (centred**2).sum() / (count - 1 if unbiased else count)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """[B, T] fp32 x standardised over its masked entries, padding 0:

    (x − mean) / sqrt(var + 1e-8)          mean, var (unbiased) over the masked entries only
    (x − mean) / sqrt(var + 1e-8) + mean   (shift_mean=False: TRL's convention for whitening rewards, which
                                            keeps their mean and rescales only their spread)
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask, unbiased=True)
    whitened = (x.float() - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return _masked(whitened, mask)


def kl_penalised_rewards(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    sequence_rewards: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of B sampled responses (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020, eq. 1):

        kl_t = log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)      (the sampled token's log-ratio)
        r_t  = −kl_coef · kl_t  +  [t = last real token] · R(x, y)

    Args:
        policy_logps: [B, T] log-probs of the sampled tokens under the policy that sampled them.
        reference_logps: [B, T] the same tokens' log-probs under the frozen reference.
        sequence_rewards: [B] the reward model's score R(x, y) of each whole response.
        mask: [B, T] bool, True on real response tokens (a non-empty prefix of each row; checked).
        kl_coef: β ≥ 0 of the KL penalty (a controller's `value`).

    Returns:
        rewards: [B, T] fp32, detached (rollout-time constants), 0 on padding.
        kl: [B, T] fp32 per-token log-ratios, detached, 0 on padding; its row sums are the sequence log-ratios.
    """
    _check_mask(mask, policy_logps, reference_logps)
    if sequence_rewards.shape != mask.shape[:1]:
        raise ValueError(f"sequence_rewards must be [B] = [{mask.shape[0]}], got {tuple(sequence_rewards.shape)}")
    _check_prefix_mask(mask)
    kl = _masked(policy_logps.detach().float() - reference_logps.detach().float(), mask)  # [B, T]
    rewards = -kl_coef * kl  # [B, T], 0 on padding
    last = mask.sum(dim=1, keepdim=True) - 1  # [B, 1] index of each row's last real token
    rewards = rewards.scatter_add(1, last, sequence_rewards.detach().float().unsqueeze(1))
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over each row's real tokens:

        δ_t = r_t + γ · V_{t+1} − V_t          V after a row's last real token = 0 (the episode ends there)
        A_t = Σ_{k ≥ 0} (γλ)^k · δ_{t+k}       over the row's real tokens = δ_t + γλ · A_{t+1}
        returns_t = A_t + V_t                  (the value head's regression target)

    λ = 0 gives A = δ (one-step TD); λ = 1 gives returns = the discounted reward-to-go, whatever V is.
    Computed by the backward recursion over T, vectorised over B.

    Args:
        rewards: [B, T] per-token rewards (e.g. `kl_penalised_rewards`).
        values: [B, T] the value head's estimates V_t at rollout time.
        mask: [B, T] bool, True on real response tokens (a non-empty prefix of each row; checked).
        gamma: discount γ ∈ [0, 1] (RLHF: 1).
        lam: GAE λ ∈ [0, 1] (Ziegler et al.: 0.95).

    Returns:
        advantages, returns: [B, T] fp32, detached (they are targets), 0 on padding.
    """
    _check_mask(mask, rewards, values)
    _check_prefix_mask(mask)
    rewards, values = _masked(rewards.detach(), mask), _masked(values.detach(), mask)  # [B, T], 0 on padding
    # With a prefix mask, V_{t+1} = 0 after the last real token and every padded δ is 0, so A = 0 on padding.
    next_values = torch.cat([values[:, 1:], values.new_zeros(values.shape[0], 1)], dim=1)  # [B, T]
    deltas = rewards + gamma * next_values - values  # [B, T]
    advantages = torch.zeros_like(deltas)
    following = deltas.new_zeros(deltas.shape[0])  # [B] A_{t+1}
    for t in reversed(range(deltas.shape[1])):
        following = deltas[:, t] + gamma * lam * following
        advantages[:, t] = following
    advantages = _masked(advantages, mask)
    return advantages, advantages + values


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss, averaged over the real tokens:

        ratio_t = exp(log π(y_t) − log π_old(y_t))
        loss    = mean_mask max(−A_t · ratio_t, −A_t · clip(ratio_t, 1 − ε, 1 + ε))

    Where the clipped term is strictly the larger, its gradient w.r.t. `logps` is 0; at exactly 1 ± ε both terms
    are equal and the token keeps the unclipped gradient.

    Args:
        logps: [B, T] log-probs of the sampled tokens under the policy being trained (carries the gradient).
        old_logps: [B, T] the same tokens' log-probs at rollout time.
        advantages: [B, T] advantages A_t (e.g. `gae`, then `whiten`).
        mask: [B, T] bool, True on real response tokens.
        clip_range: ε > 0 (Ziegler et al., Stiennon et al.: 0.2).

    Returns:
        loss: scalar fp32.
        clip_fraction: scalar fp32, detached: the share of real tokens where −A·clip(ratio) > −A·ratio strictly.
        approx_kl: scalar fp32, detached: mean_mask ½ (log π − log π_old)², the "k2" estimator of KL(π_old ‖ π)
            (Schulman, "Approximating KL divergence", 2020), as TRL's `approxkl`; low-variance, biased by O(δ³).
    """
    _check_mask(mask, logps, old_logps, advantages)
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range}")
    log_ratio = _masked(logps.float() - old_logps.detach().float(), mask)  # [B, T], 0 on padding
    advantages = _masked(advantages.detach(), mask)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T], 1 on padding
    unclipped = -advantages * ratio  # [B, T]
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # [B, T]
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask).detach()
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return loss, clip_fraction, approx_kl


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss (as in OpenAI baselines' PPO2 and TRL), averaged over the real tokens:

        V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
        loss   = ½ · mean_mask max((V − R)², (V_clip − R)²)

    Where the clipped term is strictly the larger, its gradient w.r.t. `values` is 0 (V_clip is constant in V
    outside the clip range); at exactly V − V_old = ±ε_v the token keeps the unclipped gradient.

    Args:
        values: [B, T] the value head's current estimates (carries the gradient).
        old_values: [B, T] its estimates at rollout time.
        returns: [B, T] regression targets R (e.g. `gae`'s returns).
        mask: [B, T] bool, True on real response tokens.
        clip_range_value: ε_v > 0 (TRL: 0.2).

    Returns:
        loss: scalar fp32.
        clip_fraction: scalar fp32, detached: the share of real tokens where (V_clip − R)² > (V − R)² strictly.
    """
    _check_mask(mask, values, old_values, returns)
    if not clip_range_value > 0:
        raise ValueError(f"clip_range_value must be > 0, got {clip_range_value}")
    values = _masked(values, mask)  # [B, T]
    old_values, returns = _masked(old_values.detach(), mask), _masked(returns.detach(), mask)  # [B, T], [B, T]
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)  # [B, T]
    unclipped_error = (values - returns) ** 2  # [B, T]
    clipped_error = (clipped_values - returns) ** 2  # [B, T]
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    clip_fraction = masked_mean((clipped_error > unclipped_error).float(), mask).detach()
    return loss, clip_fraction


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var(R − V) / Var(R) over the masked entries (computed in float64): 1 for a perfect value head, 0 for
    one that predicts the mean, negative for worse. NaN when Var(R) = 0 (every masked return equal), where the
    ratio is undefined (as Stable-Baselines3's `explained_variance`).
    """
    _check_mask(mask, values, returns)
    returns_ = returns.detach().double()[mask]  # [N]
    values_ = values.detach().double()[mask]  # [N]
    if bool((returns_ == returns_[0]).all()):
        return math.nan
    return float(1.0 - (returns_ - values_).var(unbiased=False) / returns_.var(unbiased=False))


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019 (§2.2), as TRL's `AdaptiveKLController`:

        error = clip(KL / target − 1, −0.2, 0.2)
        β    ← β · (1 + error · n_steps / horizon)

    β rises while the measured KL is above `target` and falls while below, by at most 20 % per `horizon` steps.

    Args:
        init_kl_coef: β at the start (> 0; Ziegler et al.: 0.1, TRL: 0.2).
        target: the KL (nats per sequence, the sum of `kl_penalised_rewards`' kl over a row) to hold (> 0; TRL: 6).
        horizon: steps over which a full ±20 % correction applies (> 0; TRL: 10000, counted in samples).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if not init_kl_coef > 0:
            raise ValueError(f"init_kl_coef must be > 0, got {init_kl_coef}")
        if not target > 0:
            raise ValueError(f"target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """One update after `n_steps` steps (TRL: the batch's sample count) whose mean KL was `current_kl`."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """The coefficient, for a checkpoint; target and horizon come from the config on resume."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class FixedKLController:
    """A constant KL coefficient β with `AdaptiveKLController`'s interface (`update` changes nothing)."""

    def __init__(self, kl_coef: float) -> None:
        if not kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing: β stays fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
