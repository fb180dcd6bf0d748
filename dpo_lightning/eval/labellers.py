"""Labellers: rank a prompt's K samples — the one interface to a task reward, a reward model or a judge.

    prompts [P] + samples [P, K] (texts) ─► Labeller.label ─► Labels: scores [P, K] (None: could not be scored)

A higher score is a better sample; equal scores state no preference. What ranks them:

    RewardLabeller   any `eval.rewards.Reward` scores each sample: the task's ground truth (`vader`,
                     `classifier`) or a trained reward model (`ClassifierReward` with `positive_label: null`).
                     A non-finite score is a failed label, never a number.
    JudgeLabeller    a pairwise judge (`eval.judges`: the reward-model judge, an LLM judge) compares every two
                     samples of a prompt, K(K−1)/2 comparisons; a sample's score is its share of the comparisons it
                     won, a tie counting half:  score_k = (wins_k + ties_k / 2) / judged_k.
                     A failed comparison (timeout, an answer that names neither) is counted and leaves that pair out
                     of both samples' shares; a sample none of whose comparisons was judged has no score (None).

Nothing is dropped silently: `Labels.counts` holds the failed scores and judgements (with their reasons) and the
tied comparisons; the rollout counts what becomes of the samples (`online/rollouts.py`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from itertools import combinations

from dpo_lightning.eval.judges import Judge
from dpo_lightning.eval.rewards import Reward


@dataclass
class Labels:
    """Scores of P prompts' samples, [P, K] (None: that sample could not be scored), and what happened on the way:
    `counts` of failed scores, failed judgements, tied judgements; `reasons` of the failures."""

    scores: list[list[float | None]]
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


class Labeller(ABC):
    """Ranks each prompt's samples (module docstring)."""

    name: str = ""

    @abstractmethod
    def label(self, prompts: list[str], samples: list[list[str]]) -> Labels:
        """Scores of `samples` [P, K] (completion texts) of `prompts` [P]."""


class RewardLabeller(Labeller):
    """Scores every sample with a reward function r(x, y) (its texts scored in one batch)."""

    name = "reward"

    def __init__(self, reward: Reward) -> None:
        self.reward = reward

    def label(self, prompts: list[str], samples: list[list[str]]) -> Labels:
        flat_prompts = [prompt for prompt, group in zip(prompts, samples, strict=True) for _ in group]
        flat = self.reward(flat_prompts, [sample for group in samples for sample in group])
        labels = Labels([])
        start = 0
        for group in samples:
            scores = [float(score) for score in flat[start : start + len(group)]]
            start += len(group)
            failed = [not math.isfinite(score) for score in scores]
            if any(failed):
                labels.counts["failed_scores"] += sum(failed)
                labels.reasons["non-finite reward"] += sum(failed)
            labels.scores.append([None if bad else score for score, bad in zip(scores, failed, strict=True)])
        return labels


class JudgeLabeller(Labeller):
    """Scores samples by a pairwise judge's round robin (module docstring); one `compare_many` call for all the
    comparisons of a step, so a judge that batches (reward model) or runs requests concurrently (LLM) can."""

    name = "judge"

    def __init__(self, judge: Judge) -> None:
        self.judge = judge

    def label(self, prompts: list[str], samples: list[list[str]]) -> Labels:
        matches = [(p, i, j) for p, group in enumerate(samples) for i, j in combinations(range(len(group)), 2)]
        verdicts = self.judge.compare_many(
            [prompts[p] for p, _, _ in matches],
            [samples[p][i] for p, i, _ in matches],
            [samples[p][j] for p, _, j in matches],
        )
        points = [[0.0] * len(group) for group in samples]
        judged = [[0] * len(group) for group in samples]
        labels = Labels([])
        for (p, i, j), verdict in zip(matches, verdicts, strict=True):
            if verdict.outcome == "failed":
                labels.counts["failed_judgements"] += 1
                labels.reasons[verdict.reason or "failed"] += 1
                continue
            if verdict.outcome == "tie":
                labels.counts["tied_judgements"] += 1
            judged[p][i] += 1
            judged[p][j] += 1
            won_i = {"first": 1.0, "second": 0.0, "tie": 0.5}[verdict.outcome]
            points[p][i] += won_i
            points[p][j] += 1.0 - won_i
        for p, group in enumerate(samples):
            labels.scores.append([points[p][k] / judged[p][k] if judged[p][k] else None for k in range(len(group))])
        return labels
