"""A Monte-Carlo estimate of the sequence-level KL(π ‖ π_ref), the x-axis of the paper's reward–KL frontier.

For completions y_i ~ π(·|x_i) of B prompts:

    KL(π ‖ π_ref) = E_x E_{y~π}[log π(y|x) − log π_ref(y|x)]  ≈  mean_i (log π(y_i|x_i) − log π_ref(y_i|x_i))

an unbiased estimate (of KL averaged over prompts) whose standard error is the sample standard deviation of the
B log-ratios over √B. Single samples can be negative; the mean converges to a value ≥ 0. The log-probs are
summed over the completion's tokens, EOS included, exactly as training sums response log-probs.

What it estimates exactly: samples are cut at `samples.max_new_tokens` = N, so y_i is a draw of the first N tokens
of a response (the whole response where it ends with EOS before that). The mean is an unbiased estimate of the KL
between π's and π_ref's distributions of those truncated responses, which by the chain rule of KL is

    KL_N = E_x Σ_{t ≤ N} E_{y<t ~ π}[ KL(π(·|x, y<t) ‖ π_ref(·|x, y<t)) ]    ≤    KL(π ‖ π_ref)

the sequence-level KL less the terms of the tokens after N: a lower bound, equal to it when no response of π runs
longer than N tokens. `val/truncated_samples` (the share of samples that reached N tokens without EOS) says how
far that holds: at 0 the estimate is of the sequence-level KL.
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
