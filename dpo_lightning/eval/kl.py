"""A Monte-Carlo estimate of the sequence-level KL(π ‖ π_ref), the x-axis of the paper's reward–KL frontier.

For completions y_i ~ π(·|x_i) of B prompts:

    KL(π ‖ π_ref) = E_x E_{y~π}[log π(y|x) − log π_ref(y|x)]  ≈  mean_i (log π(y_i|x_i) − log π_ref(y_i|x_i))

an unbiased estimate (of KL averaged over prompts) whose standard error is the sample standard deviation of the
B log-ratios over √B. Single samples can be negative; the mean converges to a value ≥ 0. The log-probs are
summed over the completion's tokens, EOS included, exactly as training sums response log-probs.
"""

from __future__ import annotations

import math

import torch


def mean_and_standard_error(values: torch.Tensor) -> tuple[float, float]:
    """(mean, standard error of the mean) of [B] values; the error is 0 for B = 1."""
    values = values.double()
    count = values.numel()
    mean = float(values.mean())
    if count < 2:
        return mean, 0.0
    return mean, float(values.std(unbiased=True)) / math.sqrt(count)


def kl_estimate(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> tuple[float, float]:
    """(KL estimate, its standard error) from [B] summed log-probs of policy samples under π and π_ref."""
    return mean_and_standard_error(policy_logps.double() - reference_logps.double())
