"""The reward and KL of a policy's samples on fixed prompts, against a reference model — one frontier point.

    prompts [P] ─► samples y ~ π (seeded) ─► r(x, y) [P]                      ─► reward ± standard error
                                        └─► log π(y|x) − log π_ref(y|x) [P]  ─► KL(π ‖ π_ref) ± standard error

The same estimates as the validation samples (`eval/callback.py`, `eval/kl.py`), for models outside a run: the rounds
of iterative DPO against the initial policy, the experiments' end points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dpo_lightning.eval.kl import kl_estimate, mean_and_standard_error
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import SamplingSettings, completion_text, sample_completions, sample_logprobs


@dataclass(frozen=True)
class FrontierPoint:
    """Mean true reward and KL(π ‖ π_ref) of P samples, each with its standard error."""

    reward: float
    reward_se: float
    kl: float
    kl_se: float
    samples: int


def reward_and_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompts: list[list[int]],
    tokenizer: Any,
    settings: SamplingSettings,
    reward: Reward,
) -> FrontierPoint:
    """One sample of `policy` per prompt, its reward and its log-ratio to `reference` (module docstring)."""
    samples = sample_completions(policy, prompts, tokenizer, settings)
    texts = [completion_text(tokenizer, prompt, sample) for prompt, sample in zip(prompts, samples, strict=True)]
    rewards = torch.tensor(reward([p for p, _ in texts], [c for _, c in texts]), dtype=torch.float64)
    scoring = dict(pad_token_id=tokenizer.pad_token_id, batch_size=settings.batch_size)
    policy_logps = sample_logprobs(policy, prompts, samples, **scoring)
    reference_logps = sample_logprobs(reference, prompts, samples, **scoring)
    kl, kl_se = kl_estimate(policy_logps, reference_logps)
    mean, se = mean_and_standard_error(rewards)
    return FrontierPoint(mean, se, kl, kl_se, len(prompts))
