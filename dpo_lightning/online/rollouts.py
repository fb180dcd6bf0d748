"""Rollouts: K samples of each prompt from the current policy, labelled and turned into training rankings.

    prompt ids [B] ─► sample_completions (π itself, K per prompt, prompt computed once) ─► texts
                  ─► Labeller.label ─► scores [B][K] ─► TokenizedRanking per prompt (its samples' ids, ranks)

The rankings are what a ranked dataset gives (`data/rankings.py`): the samples' own token ids as responses (EOS
included where the sample ended; a sample cut at `max_new_tokens` keeps its ids as drawn, as a truncated training
response does), competition ranks from the scores (ties share a rank). So every layout, every pairwise objective
(through `algorithm.pairs`) and the ranking objectives (Plackett–Luce on the whole ranking) train on them unchanged.

What becomes of each sample is counted (`Rollout.counts`), never silent:

    empty_samples       a sample whose text is blank (the policy ended at once): not ranked — or an error
    unscored_samples    a sample the labeller could not score (failed judgements, a non-finite reward): not ranked
                        — or an error
    tied_prompts        a prompt whose ranked samples all scored the same: no preference, no ranking
    too_few_samples     a prompt left with fewer than two ranked samples: no ranking
    truncated_samples   samples cut at max_new_tokens before their EOS (kept)

`skip_bad_samples=False` turns the first empty or unscored sample into a one-line RunError instead of a count.

Randomness is counter-based: micro-batch m (= optimizer step × accumulate_grad_batches + its place in the step) of
rank r draws with the seed `sampling.seed + m × W + r` (W ranks), so a run resumed from the checkpoint of step t
samples afterwards exactly what the uninterrupted run did — the sampler's whole state is the step counter that the
checkpoint already holds.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from dpo_lightning.data.rankings import ranks_from_scores
from dpo_lightning.data.tokenize import TokenizedRanking
from dpo_lightning.errors import RunError
from dpo_lightning.eval.labellers import Labeller
from dpo_lightning.eval.sampling import SamplingSettings, completion_text, sample_completions, truncated


@dataclass
class Rollout:
    """One step's rollouts: the rankings to train on, what happened to the samples, and how long it took."""

    rankings: list[TokenizedRanking]
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    mean_score: float = float("nan")  # the labeller's mean score over the scored samples
    sample_tokens: int = 0  # tokens generated
    sampling_s: float = 0.0
    labelling_s: float = 0.0


def rank_samples(
    prompt_ids: list[int], samples: list[list[int]], scores: list[float | None], usable: list[bool]
) -> tuple[TokenizedRanking | None, str]:
    """The ranking of one prompt's usable, scored samples, or (None, why not: "tied_prompts" | "too_few_samples")."""
    kept = [k for k, score in enumerate(scores) if usable[k] and score is not None]
    if len(kept) < 2:
        return None, "too_few_samples"
    kept_scores = [scores[k] for k in kept]
    if len(set(kept_scores)) < 2:
        return None, "tied_prompts"
    return TokenizedRanking(prompt_ids, [samples[k] for k in kept], ranks_from_scores(kept_scores)), ""


class Rollouts:
    """Samples, labels and ranks (module docstring).

    Args:
        tokenizer: the policy's (pad and EOS ids, decoding).
        sampling: the generation settings (π itself at temperature 1, top_p 1).
        samples_per_prompt: K ≥ 2.
        labeller: ranks each prompt's samples.
        skip_bad_samples: count empty and unscored samples (True) or stop at the first (False).
    """

    def __init__(
        self,
        tokenizer: Any,
        sampling: SamplingSettings,
        samples_per_prompt: int,
        labeller: Labeller,
        skip_bad_samples: bool = True,
    ) -> None:
        self.tokenizer, self.sampling, self.samples_per_prompt = tokenizer, sampling, samples_per_prompt
        self.labeller, self.skip_bad_samples = labeller, skip_bad_samples

    def __call__(
        self, policy: torch.nn.Module, prompts: list[list[int]], seed_offset: int = 0, synced_gpus: bool = False
    ) -> Rollout:
        """The rollout of `prompts` [B]; `seed_offset` picks the draws (the module passes step × W + rank)."""
        started = time.perf_counter()
        k = self.samples_per_prompt
        samples = sample_completions(
            policy, prompts, self.tokenizer, self.sampling, seed_offset, synced_gpus, num_samples=k
        )  # [B·K], prompt-major
        groups = [samples[b * k : (b + 1) * k] for b in range(len(prompts))]  # [B][K]
        texts = [
            [completion_text(self.tokenizer, prompt, sample) for sample in group]
            for prompt, group in zip(prompts, groups, strict=True)
        ]  # [B][K] (prompt text, completion text)
        sampled = time.perf_counter()
        labels = self.labeller.label([group[0][0] for group in texts], [[c for _, c in group] for group in texts])
        rollout = Rollout([], labels.counts, labels.reasons)
        rollout.sampling_s, rollout.labelling_s = sampled - started, time.perf_counter() - sampled
        rollout.sample_tokens = sum(len(sample) for sample in samples)
        eos = self.tokenizer.eos_token_id
        scored = [score for group in labels.scores for score in group if score is not None]
        rollout.mean_score = sum(scored) / len(scored) if scored else float("nan")
        for prompt, group, group_texts, scores in zip(prompts, groups, texts, labels.scores, strict=True):
            usable = [bool(text.strip()) for _, text in group_texts]
            unscored = sum(score is None for score in scores)
            rollout.counts.update(
                empty_samples=usable.count(False),
                unscored_samples=unscored,
                truncated_samples=sum(truncated(sample, eos) for sample in group),
            )
            if not self.skip_bad_samples and (False in usable or unscored):
                what = (
                    "is empty" if False in usable else f"could not be labelled ({labels.reasons.most_common(1)[0][0]})"
                )
                raise RunError(
                    f"rollout: a sample of prompt {group_texts[0][0]!r} {what}; set algorithm.skip_bad_samples=true "
                    "to count and skip such samples"
                )
            ranking, why_not = rank_samples(prompt, group, scores, usable)
            if ranking is None:
                rollout.counts[why_not] += 1
            else:
                rollout.rankings.append(ranking)
        rollout.counts["prompts"] += len(prompts)
        rollout.counts["samples"] += len(samples)
        return rollout
